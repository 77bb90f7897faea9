#!/usr/bin/env bash
# Install the real mail stack the integration tests, benchmarks and demo run
# against: MariaDB, Postfix (+mysql maps), Courier authlib/IMAP/POP3, maildrop,
# Cyrus SASL, swaks; Prometheus (promtool and a server for tests/integration/test_monitoring.py,
# which runs its own on a free port); fail2ban for fail2ban-regex (tests/integration/test_guard_fail2ban.py
# checks the shipped filter against vmaild's own log lines; no fail2ban server is started).
# For a fresh Debian 12 machine, as root; idempotent.
#
# * apt runs only when a package is missing (a dpkg-query check), so a
#   second `make test` spends well under a second here.
# * Nothing is left running by package scripts: a policy-rc.d that denies
#   every service start is put in place for the install if none exists, and
#   any mail daemon that appeared anyway is stopped again.
# * The harness starts private instances itself; system services stay off.
# * systemd is installed only for `systemd-analyze verify` of our unit files;
#   it does not become PID 1 and starts nothing in a container.
set -euo pipefail

PACKAGES=(
  mariadb-server mariadb-client
  postfix postfix-mysql
  courier-authdaemon courier-authlib courier-authlib-pipe courier-authlib-mysql
  courier-imap courier-pop maildrop
  libsasl2-modules sasl2-bin libpam-mysql
  swaks python3-venv openssl
  gcc libc6-dev
  systemd
  prometheus
  fail2ban
)

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

missing_packages() {
  local pkg status
  for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || printf '%s\n' "$pkg"
  done
}

system_daemon_pids() {
  # Mail daemons as the packages' init scripts would run them. The test
  # harness runs its own instances differently (mariadbd --no-defaults,
  # Postfix with a private queue directory, Courier without courierlogger),
  # so these patterns never match them.
  local pid
  for pid in $(pgrep -x mariadbd; pgrep -x mysqld); do
    grep -qa -- '--no-defaults' "/proc/$pid/cmdline" 2>/dev/null || echo "$pid"
  done
  for pid in $(pgrep -x master || true); do
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == /var/spool/postfix ]] && echo "$pid"
  done
  pgrep -x courierlogger || true
  pgrep -x saslauthd || true
  # The packaged Prometheus runs as user prometheus (port 9090); the monitoring test runs
  # its own as root on a free port.
  pgrep -x -u prometheus prometheus 2>/dev/null || true
  # The packaged fail2ban server (the tests only run fail2ban-regex, which needs none).
  pgrep -f '^/usr/bin/python3 /usr/bin/fail2ban-server' 2>/dev/null || true
}

install_packages() {
  local -a missing=("$@")
  log "installing: ${missing[*]}"

  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # "exit 101" = action forbidden: invoke-rc.d starts no service.
    printf '#!/bin/sh\n# temporary, from vmaild scripts/install-deps.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi

  local before
  before=$(system_daemon_pids | sort)

  debconf-set-selections <<'EOF'
postfix postfix/main_mailer_type select Internet Site
postfix postfix/mailname string mail.example.test
EOF
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

  # Stop anything a postinst started despite policy-rc.d (pids that were
  # not there before the install; never touch pre-existing processes).
  local pid
  for pid in $(comm -13 <(printf '%s\n' "$before") <(system_daemon_pids | sort)); do
    log "stopping $(ps -o comm= -p "$pid" 2>/dev/null || echo '?') (pid $pid) started by a package script"
    kill "$pid" 2>/dev/null || true
  done
}

ensure_vmail_account() {
  # The tutorial's virtual mail owner: uid/gid 5000, no login, no home made.
  local gid
  if gid=$(getent group vmail | cut -d: -f3); [[ -n $gid ]]; then
    [[ $gid == 5000 ]] || { log "group vmail exists with gid $gid, expected 5000"; exit 1; }
  else
    groupadd -g 5000 vmail
    log "created group vmail (5000)"
  fi
  local uid
  if uid=$(id -u vmail 2>/dev/null); then
    [[ $uid == 5000 ]] || { log "user vmail exists with uid $uid, expected 5000"; exit 1; }
  else
    useradd -u 5000 -g vmail -d /home/vmail -M -s /usr/sbin/nologin vmail
    log "created user vmail (5000)"
  fi
}

ensure_postfix_in_courier_group() {
  # smtpd's Cyrus SASL reaches /run/courier/authdaemon (0750 courier:courier).
  if [[ " $(id -nG postfix) " != *" courier "* ]]; then
    usermod -a -G courier postfix
    log "added postfix to group courier"
  fi
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
  install_packages "${missing[@]}"
else
  log "all packages present"
fi
ensure_vmail_account
ensure_postfix_in_courier_group
