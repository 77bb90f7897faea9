#!/usr/bin/env bash
# scripts/install.sh (`make install`): put vmaild and the seed setup's files in place on a
# Debian 12 system, as root. Safe to run again: nothing changes when nothing changed, and a
# file you edited is never overwritten silently.
#
#   sudo make install                  # or: sudo scripts/install.sh
#   ROOT=/tmp/x scripts/install.sh     # into a staging tree (DESTDIR-style); tests do this
#
# What it does (each step prints one line, "changed" or "ok"):
#  1. accounts: group and user vmail (5000:5000, home /home/vmail, no login) as in the seed;
#     postfix added to group courier (SMTP AUTH reaches authdaemond's socket);
#  2. the package: a virtualenv in /opt/vmaild, rebuilt only when the source changed;
#     vmaild, vmailctl, vmaild-authpipe linked into /usr/local/bin; the maildrop wrapper in
#     /usr/local/lib/vmaild; README and snippets in /usr/local/share/doc/vmaild;
#  3. configuration files (vmaild.conf, the systemd units, tmpfiles.d, sysusers.d, Cyrus
#     SASL's smtpd.conf, fail2ban's filter.d/vmaild.conf where fail2ban is installed)
#     like dpkg conffiles: installed when absent, updated when you did
#     not edit them, and when you did and the shipped version changed, yours stays and the
#     new one is written next to it as FILE.new, with a notice;
#  4. /home/vmail (vmail, 0750), /var/spool/postfix/vmaild (2750 vmail:postfix: vmaild's
#     socketmap, policy and SMTP AUTH sockets, for Postfix only) and a self-signed certificate in
#     /etc/vmaild/tls (the seed's openssl step), never replaced once there;
#  5. Courier: /etc/courier/authProg -> vmaild-authpipe, and the settings of
#     courier/*.vmaild set line by line in authdaemonrc, imapd, imapd-ssl, pop3d,
#     pop3d-ssl; Postfix: main.cf settings of postfix/main.cf.vmaild and main.cf.policy
#     with `postconf -e`, master.cf entries of postfix/master.cf.vmaild with `postconf -M`,
#     their vmaild sockets replaced by the [socketmap]/[policy]/[sasl] addresses of an
#     installed vmaild.conf that listens elsewhere (one kept from an older version: TCP
#     ports). SMTP AUTH goes to vmaild's [sasl] socket (smtpd_sasl_type = dovecot); a kept
#     vmaild.conf from before [sasl] gets the section once, and one without it keeps
#     Postfix on Cyrus SASL -> authdaemond (postfix/sasl/smtpd.conf).
#     Each file is copied to FILE.vmaild-backup before vmaild first changes it;
#  6. systemd: daemon-reload and the tmpfiles entry applied (authdaemond's socket
#     directory gets an ACL entry for vmail, systemd/vmaild.tmpfiles); vmaild.socket
#     and vmaild-local.socket enabled where vmaild.service is (an upgrade). Services
#     are not started or restarted; the last lines say which ones to restart.
#
# Environment: ROOT (staging root, default /), PYTHON (default /usr/bin/python3),
# VMAILD_HOSTNAME (certificate name; default: Postfix's myhostname, else hostname -f).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${ROOT:-}
ROOT=${ROOT%/}
PYTHON=${PYTHON:-/usr/bin/python3}

VENV=/opt/vmaild
BINDIR=/usr/local/bin
LIBDIR=/usr/local/lib/vmaild
DOCDIR=/usr/local/share/doc/vmaild
ETC=/etc/vmaild
TLS=$ETC/tls
STATE=/var/lib/vmaild/install     # pristine copies of installed conffiles
MAILHOME=/home/vmail
SOCKETDIR=/var/spool/postfix/vmaild   # vmaild.conf.example [socketmap], [policy], [sasl]; vmaild.tmpfiles
VMAIL_ID=5000

changes=0
restart=()
step="start"
log() { printf 'install: %s\n' "$*"; }
changed() { changes=$((changes + 1)); log "$1: changed${2:+ ($2)}"; }
ok() { log "$1: ok${2:+ ($2)}"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
want_restart() {
  if [[ " ${restart[*]} " != *" $1 "* ]]; then restart+=("$1"); fi
}

# Any failing command names the step it ended; a re-run continues where it stopped.
on_error() {
  # A failure inside $(...) fails its caller too: report once, from the top level.
  ((BASH_SUBSHELL == 0)) || return 0
  printf 'install: error: step "%s" failed (exit %s at line %s: %s); fix the cause and run\n' \
    "$step" "$1" "$2" "$3" >&2
  printf 'install: "make install" again: the steps already done are skipped\n' >&2
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
set -E

[[ $(id -u) -eq 0 ]] || die "run as root (ownership of /etc/vmaild, /home/vmail, Courier's files)"
[[ -z $ROOT || -d $ROOT ]] || die "ROOT=$ROOT is not a directory"

# ------------------------------------------------------------------------------ packages
# What the shipped configuration runs: Postfix with Cyrus SASL's PLAIN/LOGIN, Courier's
# authdaemond with the authpipe module (courier-authlib-pipe: without it authdaemond logs
# "libauthpipe.so.0 ... file not found" and no one can log in), IMAP, POP3, maildrop for
# delivery, and what this script itself uses. The database server is yours (local or not).
PACKAGES=(postfix libsasl2-modules courier-authdaemon courier-authlib-pipe courier-imap
          courier-pop maildrop python3-venv openssl)

ensure_packages() {
  step="Debian packages"
  if [[ -n $ROOT ]]; then
    log "packages: skipped (ROOT=$ROOT)"
    return
  fi
  local pkg missing=()
  for pkg in "${PACKAGES[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) != installed ]]; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    ok "packages" "${#PACKAGES[@]} present"
    return
  fi
  log "packages: installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  changed "packages" "${missing[*]}"
  want_restart courier-authdaemon
}

# ------------------------------------------------------------------------------ accounts
passwd_field() {  # passwd_field DB NAME FIELD: a field of an /etc/passwd or /etc/group entry
  if [[ -z $ROOT ]]; then
    # getent exits 2 for a missing entry: under pipefail that would end the script.
    { getent "$1" "$2" || true; } | cut -d: -f"$3"
  elif [[ -f $ROOT/etc/$1 ]]; then
    awk -F: -v n="$2" -v f="$3" '$1 == n { print $f; exit }' "$ROOT/etc/$1"
  fi
}

ensure_accounts() {
  step="accounts"
  if [[ -n $ROOT && ! -f $ROOT/etc/passwd ]]; then
    log "accounts: skipped (no $ROOT/etc/passwd)"
    return
  fi
  local prefix=()
  if [[ -n $ROOT ]]; then prefix=(--prefix "$ROOT"); fi
  local gid uid
  gid=$(passwd_field group vmail 3)
  if [[ -z $gid ]]; then
    groupadd "${prefix[@]}" -g "$VMAIL_ID" vmail
    changed "group vmail" "gid $VMAIL_ID"
  elif [[ $gid != "$VMAIL_ID" ]]; then
    die "group vmail exists with gid $gid; the seed and vmaild.conf [mailbox] expect $VMAIL_ID"
  fi
  uid=$(passwd_field passwd vmail 3)
  if [[ -z $uid ]]; then
    useradd "${prefix[@]}" -u "$VMAIL_ID" -g vmail -d "$MAILHOME" -M -s /usr/sbin/nologin \
      -c "virtual mail owner" vmail
    changed "user vmail" "uid $VMAIL_ID"
  elif [[ $uid != "$VMAIL_ID" ]]; then
    die "user vmail exists with uid $uid; the seed and vmaild.conf [mailbox] expect $VMAIL_ID"
  else
    ok "user and group vmail ($VMAIL_ID)"
  fi
  # Cyrus SASL in smtpd connects to /run/courier/authdaemon/socket (0750 courier:courier).
  if [[ -n $(passwd_field passwd postfix 1) && -n $(passwd_field group courier 1) ]]; then
    if [[ ",$(passwd_field group courier 4)," == *,postfix,* ]]; then
      ok "postfix in group courier"
    else
      usermod "${prefix[@]}" -a -G courier postfix
      changed "postfix in group courier"
      postfix_changed
    fi
  else
    log "postfix in group courier: skipped (postfix or courier not installed)"
  fi
}

# ----------------------------------------------------------------------------- package
source_hash() {
  (cd "$SRC" && find daemons -name '*.py' -o -name '*.typed' | LC_ALL=C sort \
     | xargs sha256sum setup.cfg pyproject.toml README.md) | sha256sum | cut -d' ' -f1
}

install_package() {
  step="package in $VENV"
  local venv=$ROOT$VENV hash stamp
  hash=$(source_hash)
  stamp=$venv/.vmaild-source
  if [[ -x $venv/bin/vmaild && -f $stamp && $(cat "$stamp") == "$hash" ]]; then
    ok "package in $VENV"
  else
    [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv" \
      || die "cannot create a virtualenv with $PYTHON (apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$SRC" 2>&1 \
      | grep -v '^WARNING: Location' >&2 || true
    "$venv/bin/vmaild" --version >/dev/null || die "the package did not install into $VENV"
    printf '%s\n' "$hash" >"$stamp"
    changed "package in $VENV" "$("$venv/bin/vmaild" --version)"
    want_restart vmaild
    want_restart courier-authdaemon
  fi
  local name
  mkdir -p "$ROOT$BINDIR"
  for name in vmaild vmailctl vmaild-authpipe; do
    link "$VENV/bin/$name" "$BINDIR/$name"
  done
  install_file "$SRC/postfix/vmaild-maildrop" "$LIBDIR/vmaild-maildrop" 0755
  local doc
  for doc in README.md postfix/main.cf.vmaild postfix/main.cf.policy postfix/master.cf.vmaild \
             courier/README.md scripts/vmaild.conf.example fail2ban/filter.d/vmaild.conf \
             fail2ban/jail.d/vmaild.conf.example; do
    install_file "$SRC/$doc" "$DOCDIR/${doc//\//-}" 0644 quiet
  done
  for doc in "$SRC"/monitoring/*; do  # Grafana dashboard, Prometheus rules and their tests
    install_file "$doc" "$DOCDIR/monitoring/${doc##*/}" 0644 quiet
  done
  ok "documentation in $DOCDIR"
}

link() {  # link TARGET PATH: PATH is a symlink to TARGET (absolute, as on the real system)
  local target=$1 path=$ROOT$2
  if [[ -L $path && $(readlink "$path") == "$target" ]]; then
    ok "$2 -> $target"
    return
  fi
  if [[ -e $path && ! -L $path ]]; then
    backup_once "$path"
    rm -f "$path"
  fi
  ln -sfn "$target" "$path"
  changed "$2 -> $target"
}

install_file() {  # install_file SRC PATH MODE [quiet]: a program or document, always ours
  local src=$1 path=$ROOT$2 mode=$3
  mkdir -p "$(dirname "$path")"
  if [[ -f $path ]] && cmp -s "$src" "$path"; then
    if [[ ${4:-} != quiet ]]; then ok "$2"; fi
  else
    install -m "$mode" "$src" "$path"
    changed "$2"
  fi
}

# ------------------------------------------------------------------------- conffiles
# conffile SRC PATH MODE OWNER:GROUP [SERVICE] [takeover]: dpkg's conffile rules. The
# pristine copy of what was installed last time tells "edited by the admin" from "not
# edited". With "takeover", a file vmaild never installed (the seed's own) is replaced at
# the first install, after a FILE.vmaild-backup copy, like the Postfix and Courier files.
conffile() {
  local src=$1 rel=$2 mode=$3 owner=$4 service=${5:-} takeover=${6:-}
  local path=$ROOT$rel pristine=$ROOT$STATE/${rel//\//_}
  mkdir -p "$(dirname "$path")" "$ROOT$STATE"
  if [[ -n $takeover && -e $path && ! -f $pristine ]] && ! cmp -s "$src" "$path"; then
    backup_once "$path"
    install -m "$mode" "$src" "$path"
    chown "$owner" "$path"
    cp "$src" "$pristine"
    changed "$rel" "replaced; the previous one is $rel.vmaild-backup"
    if [[ -n $service ]]; then want_restart "$service"; fi
  elif [[ ! -e $path ]]; then
    install -m "$mode" "$src" "$path"
    chown "$owner" "$path"
    cp "$src" "$pristine"
    changed "$rel" "installed"
    if [[ -n $service ]]; then want_restart "$service"; fi
  elif cmp -s "$src" "$path"; then
    cp "$src" "$pristine"
    rm -f "$path.new"
    ok "$rel"
  elif [[ -f $pristine ]] && cmp -s "$pristine" "$path"; then
    install -m "$mode" "$src" "$path"   # not edited here: follow the shipped version
    chown "$owner" "$path"
    cp "$src" "$pristine"
    changed "$rel" "updated"
    if [[ -n $service ]]; then want_restart "$service"; fi
  elif [[ -f $pristine ]] && cmp -s "$pristine" "$src"; then
    ok "$rel" "edited here; kept"
  else
    install -m "$mode" "$src" "$path.new"
    chown "$owner" "$path.new"
    cp "$src" "$pristine"
    changes=$((changes + 1))
    log "$rel: NOTICE: edited here and changed in vmaild; kept yours, the new version is" \
        "$rel.new (compare: diff $rel $rel.new)"
  fi
}

install_conffiles() {
  step="configuration files"
  local vgroup=vmail
  if [[ -z $(passwd_field group vmail 1) ]]; then vgroup=root; fi
  # The database password is in it: vmaild (vmail) and vmaild-authpipe (root) read it.
  conffile "$SRC/scripts/vmaild.conf.example" $ETC/vmaild.conf 0640 "root:$vgroup" vmaild
  ensure_sasl_section
  conffile "$SRC/systemd/vmaild.service" /etc/systemd/system/vmaild.service 0644 root:root vmaild
  conffile "$SRC/systemd/vmaild.socket" /etc/systemd/system/vmaild.socket 0644 root:root vmaild
  conffile "$SRC/systemd/vmaild-local.socket" /etc/systemd/system/vmaild-local.socket 0644 \
    root:root vmaild
  conffile "$SRC/systemd/vmaild.tmpfiles" /etc/tmpfiles.d/vmaild.conf 0644 root:root
  conffile "$SRC/systemd/vmaild.sysusers" /etc/sysusers.d/vmaild.conf 0644 root:root
  if [[ -d $ROOT/etc/fail2ban/filter.d ]]; then
    # The filter only: a jail using it is the admin's choice (fail2ban/jail.d/vmaild.conf.example
    # in the documentation directory).
    conffile "$SRC/fail2ban/filter.d/vmaild.conf" /etc/fail2ban/filter.d/vmaild.conf 0644 \
      root:root
  fi
  if [[ -d $ROOT/etc/postfix ]]; then
    # The seed's saslauthd socket is inside smtpd's chroot, which master.cf.vmaild leaves:
    # keeping its smtpd.conf would answer 454 to every SMTP AUTH.
    conffile "$SRC/postfix/sasl/smtpd.conf" /etc/postfix/sasl/smtpd.conf 0644 root:root postfix \
      takeover
  fi
}

# An upgrade from before vmaild served SMTP AUTH itself: the admin's vmaild.conf is kept
# (the new one lands as .new), so the [sasl] section main.cf.vmaild's smtpd_sasl_path needs
# is added to it. Once only (the marker): an admin who removes it later keeps Postfix on
# Cyrus SASL (postfix_endpoints).
ensure_sasl_section() {
  local conf=$ROOT$ETC/vmaild.conf marker=$ROOT$STATE/sasl-section
  [[ -f $conf ]] || return 0
  if grep -Eq '^[[:space:]]*\[sasl\]' "$conf"; then
    [[ -e $marker ]] || : >"$marker"
    return
  fi
  if [[ -e $marker ]]; then
    ok "$ETC/vmaild.conf" "no [sasl]: SMTP AUTH stays on Cyrus SASL"
    return
  fi
  backup_once "$conf"
  printf '\n%s\n%s\n%s\n' \
    "# SMTP AUTH: Postfix's smtpd_sasl_path = vmaild/auth (added by make install)" \
    "[sasl]" "listen = unix:$SOCKETDIR/auth" >>"$conf"
  : >"$marker"
  changed "$ETC/vmaild.conf" "[sasl] added: Postfix asks vmaild for SMTP AUTH"
  want_restart vmaild
}

# ----------------------------------------------------------------- home, certificate
ensure_mailhome() {
  step="$MAILHOME"
  local home=$ROOT$MAILHOME owner
  if [[ ! -d $home ]]; then
    mkdir -p "$home"
    chown "$VMAIL_ID:$VMAIL_ID" "$home"
    chmod 0750 "$home"
    changed "$MAILHOME" "vmail, 0750"
    return
  fi
  owner=$(stat -c %u:%g "$home")
  if [[ $owner != "$VMAIL_ID:$VMAIL_ID" ]]; then
    # maildrop refuses a home owned by anyone else ("Home directory owned by wrong user").
    chown "$VMAIL_ID:$VMAIL_ID" "$home"
    changed "$MAILHOME" "owner was $owner"
  else
    ok "$MAILHOME"
  fi
}

ensure_socketdir() {
  step="$SOCKETDIR"
  local dir=$ROOT$SOCKETDIR want="2750 $VMAIL_ID:postfix" have
  if [[ ! -d $(dirname "$dir") || -z $(passwd_field group postfix 1) ]]; then
    log "$SOCKETDIR: skipped (Postfix not installed)"
    return
  fi
  # As vmaild.tmpfiles says (also applied at every boot): vmaild creates its sockets in
  # it, the setgid bit gives them group postfix; nobody else may even look in.
  mkdir -p "$dir"
  have="$(stat -c %a "$dir") $(stat -c %u "$dir"):$(stat -c %G "$dir" 2>/dev/null || true)"
  if [[ $have == "$want" ]]; then
    ok "$SOCKETDIR"
  else
    chown "$VMAIL_ID:postfix" "$dir"
    chmod 2750 "$dir"
    changed "$SOCKETDIR" "vmail:postfix, 2750"
    want_restart vmaild
  fi
}

mail_hostname() {
  if [[ -n ${VMAILD_HOSTNAME:-} ]]; then
    printf '%s\n' "$VMAILD_HOSTNAME"
  elif [[ -f $ROOT/etc/postfix/main.cf ]] && command -v postconf >/dev/null; then
    postconf -c "$ROOT/etc/postfix" -h myhostname 2>/dev/null || hostname -f
  else
    hostname -f 2>/dev/null || hostname
  fi
}

ensure_certificate() {
  step="certificate"
  local dir=$ROOT$TLS name cgroup=root
  if [[ -n $(passwd_field group courier 1) ]]; then cgroup=courier; fi
  mkdir -p "$dir"
  chmod 0755 "$dir"
  if [[ -s $dir/mail.key && -s $dir/mail.crt && -s $dir/mail.pem ]]; then
    ok "$TLS" "certificate for $(openssl x509 -in "$dir/mail.crt" -noout -subject | sed 's/^subject=//')"
    return
  fi
  name=$(mail_hostname)
  # The seed: openssl req -new -x509 -newkey rsa:2048 -nodes -days 365. One key and
  # certificate for Postfix (smtpd_tls_chain_files) and Courier (TLS_CERTFILE wants key
  # and certificate in one file; couriertls reads it as courier for STARTTLS, hence
  # 0640 root:courier like Debian's /etc/courier/imapd.pem).
  (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$name" \
     -addext "subjectAltName=DNS:$name" -keyout "$dir/mail.key" -out "$dir/mail.crt" \
     2>/dev/null) || die "openssl could not make a certificate"
  cat "$dir/mail.key" "$dir/mail.crt" >"$dir/mail.pem"
  chmod 0600 "$dir/mail.key"
  chmod 0644 "$dir/mail.crt"
  chown "root:$cgroup" "$dir/mail.pem"
  chmod 0640 "$dir/mail.pem"
  changed "$TLS" "self-signed for $name; replace mail.key/crt/pem with a real one any time"
  local unit
  for unit in postfix courier-imap courier-imap-ssl courier-pop courier-pop-ssl; do
    want_restart "$unit"
  done
}

# --------------------------------------------------------------------------- Courier
backup_once() {
  if [[ ! -e $1.vmaild-backup ]]; then cp -p "$1" "$1.vmaild-backup"; fi
}

# set_shell_vars FILE SETTINGS: every NAME=value line of SETTINGS (shell syntax, as in
# courier/*.vmaild) replaces the first NAME= line of FILE, or is appended.
set_shell_vars() {
  local file=$1 settings=$2 tmp
  tmp=$(mktemp)
  awk '
    FNR == NR {
      if ($0 ~ /^[A-Za-z_][A-Za-z0-9_]*=/) { k = substr($0, 1, index($0, "=") - 1); v[k] = $0; order[++n] = k }
      next
    }
    {
      if ($0 ~ /^[A-Za-z_][A-Za-z0-9_]*=/) {
        k = substr($0, 1, index($0, "=") - 1)
        if (k in v) { if (!(k in done)) print v[k]; done[k] = 1; next }
      }
      print
    }
    END { for (i = 1; i <= n; i++) if (!(order[i] in done)) print v[order[i]] }
  ' "$settings" "$file" >"$tmp"
  if cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 1
  fi
  backup_once "$file"
  cat "$tmp" >"$file"   # keep the file's owner and mode
  rm -f "$tmp"
}

configure_courier() {
  step="Courier"
  local etc=$ROOT/etc/courier name
  if [[ ! -d $etc ]]; then
    log "Courier: skipped (no /etc/courier)"
    return
  fi
  # authdaemond runs /etc/courier/authProg (compiled-in path) as root with no arguments;
  # vmaild-authpipe reads /etc/vmaild/vmaild.conf (courier/README.md).
  if [[ -L $etc/authProg && $(readlink "$etc/authProg") == "$BINDIR/vmaild-authpipe" ]]; then
    ok "/etc/courier/authProg -> $BINDIR/vmaild-authpipe"
  else
    if [[ -e $etc/authProg && ! -L $etc/authProg ]]; then backup_once "$etc/authProg"; fi
    ln -sfn "$BINDIR/vmaild-authpipe" "$etc/authProg"
    changed "/etc/courier/authProg -> $BINDIR/vmaild-authpipe"
    want_restart courier-authdaemon
  fi
  local -A service=([authdaemonrc]=courier-authdaemon [imapd]=courier-imap
                    [imapd-ssl]=courier-imap-ssl [pop3d]=courier-pop [pop3d-ssl]=courier-pop-ssl)
  for name in authdaemonrc imapd imapd-ssl pop3d pop3d-ssl; do
    if [[ ! -f $etc/$name ]]; then
      log "/etc/courier/$name: skipped (not installed)"
    elif set_shell_vars "$etc/$name" "$SRC/courier/$name.vmaild"; then
      changed "/etc/courier/$name" "settings of courier/$name.vmaild; backup $name.vmaild-backup"
      want_restart "${service[$name]}"
    else
      ok "/etc/courier/$name"
    fi
  done
}

# --------------------------------------------------------------------------- Postfix
snippet_settings() {  # main.cf snippet -> "name=value" lines (continuations joined)
  awk '
    /^[ \t]*#/ || /^[ \t]*$/ { next }
    /^[ \t]/ { sub(/^[ \t]+/, ""); line = line " " $0; next }
    { if (line != "") print line; line = $0 }
    END { if (line != "") print line }
  ' "$@" | sed -E 's/^([A-Za-z0-9_]+)[ \t]*=[ \t]*/\1=/'
}

ini_value() {  # ini_value FILE SECTION KEY: a value of vmaild.conf, without its "; comment"
  awk -v want="[$2]" -v key="$3" '
    /^[ \t]*\[/ { section = $0; gsub(/^[ \t]+|[ \t]*([;#].*)?$/, "", section); next }
    section == want && $0 ~ "^[ \t]*" key "[ \t]*=" {
      v = substr($0, index($0, "=") + 1); sub(/[ \t]+[;#].*$/, "", v)
      gsub(/^[ \t]+|[ \t]+$/, "", v); print v; exit
    }' "$1"
}

# Postfix must ask vmaild where it listens. The snippets name the shipped sockets; a
# vmaild.conf with other [socketmap]/[policy] addresses (yours, or one kept from before
# vmaild served them on unix sockets: 127.0.0.1:10020 and :10040) gets those instead, so
# an upgrade never points Postfix at a socket nobody listens on. Prints sed arguments.
postfix_endpoints() {
  local conf=$ROOT$ETC/vmaild.conf section listen shipped prefix rel abs
  [[ -f $conf ]] || return 0
  for section in socketmap policy; do
    listen=$(ini_value "$conf" "$section" listen)
    shipped=unix:$SOCKETDIR/$section
    if [[ -z $listen || $listen == "$shipped" ]]; then continue; fi
    if [[ $listen == unix:/var/spool/postfix/* ]]; then
      rel=unix:${listen#unix:/var/spool/postfix/} abs=$listen
    elif [[ $listen == unix:* ]]; then
      rel=$listen abs=$listen
      log "Postfix: NOTICE: [$section] listen = $listen is outside /var/spool/postfix:" \
          "chrooted Postfix daemons cannot reach it" >&2
    else
      rel=inet:$listen abs=inet:$listen
    fi
    prefix=""
    if [[ $section == socketmap ]]; then prefix=socketmap:; fi
    # main.cf names the socket relative to the queue directory, master.cf's wrapper not.
    printf '%s\n' -e "s|${prefix}unix:vmaild/$section|$prefix$rel|g" \
      -e "s|$prefix$shipped|$prefix$abs|g"
  done
  sasl_endpoint "$conf"
}

# SMTP AUTH (main.cf: smtpd_sasl_type, smtpd_sasl_path = vmaild/auth): where [sasl] listens,
# relative to the queue directory when it is inside it. Cyrus SASL -> authdaemond instead
# when vmaild.conf has no [sasl] listen, or when a running vmaild does not serve it yet (an
# upgrade before its restart): pointed at a socket nobody serves, smtpd would end every
# session that gets to AUTH ("no SASL authentication mechanisms", PROTOCOLS.md P-D1).
sasl_endpoint() {
  local listen path
  listen=$(ini_value "$1" sasl listen)
  if [[ -n $listen && -z $ROOT ]] && systemctl is-active --quiet vmaild 2>/dev/null \
       && ! sasl_answers "$listen"; then
    log "Postfix: NOTICE: SMTP AUTH stays on Cyrus SASL for now: the running vmaild does" \
        "not serve [sasl] $listen yet; after 'systemctl restart vmaild', run 'make install'" \
        "again to switch Postfix to it" >&2
    listen=""
  fi
  if [[ -z $listen ]]; then
    printf '%s\n' -e 's|^smtpd_sasl_type=dovecot$|smtpd_sasl_type=cyrus|' \
      -e 's|^smtpd_sasl_path=vmaild/auth$|smtpd_sasl_path=smtpd|'
    return
  fi
  if [[ $listen == "unix:$SOCKETDIR/auth" ]]; then return; fi
  if [[ $listen == unix:/var/spool/postfix/* ]]; then
    path=${listen#unix:/var/spool/postfix/}
  elif [[ $listen == unix:* ]]; then
    path=${listen#unix:}   # absolute: smtpd is not chrooted (master.cf.vmaild)
  else
    path=inet:$listen
  fi
  printf '%s\n' -e "s|^smtpd_sasl_path=vmaild/auth\$|smtpd_sasl_path=$path|"
}

sasl_answers() {  # sasl_answers LISTEN: something listens there now
  local listen=$1 host port
  if [[ $listen == unix:* ]]; then
    [[ -S ${listen#unix:} ]]
    return
  fi
  host=${listen%:*} port=${listen##*:}
  host=${host#[} host=${host%]}
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# A running Postfix takes each change on `postfix reload`: its daemons finish what they are
# doing, and the ones started next read the new files (and, through initgroups(3), the
# postfix user's groups). A restart would be worse: stopping Postfix kills a delivery
# agent mid-delivery, and a message already in its Maildir but not yet logged as sent is
# delivered again after the start. So a running Postfix is reloaded here and never put on
# the restart list; a stopped one is (a restart starts it).
postfix_changed() {
  if [[ -z $ROOT ]] && postfix status >/dev/null 2>&1; then
    postfix reload >/dev/null 2>&1
  else
    want_restart postfix
  fi
}

configure_postfix() {
  step="Postfix"
  local dir=$ROOT/etc/postfix
  if [[ ! -f $dir/main.cf ]] || ! command -v postconf >/dev/null; then
    log "Postfix: skipped (no /etc/postfix/main.cf)"
    return
  fi
  # A running Postfix picks main.cf up process by process, but master.cf only on reload.
  # So master.cf goes first and is reloaded before main.cf changes: otherwise a process
  # could already route to "maildrop" while master still runs Debian's plain `maildrop -d`
  # entry, which bounces what authdaemond cannot find. Then main.cf, and one more reload.
  local pc=(postconf -c "$dir") line name value key endpoints=()
  mapfile -t endpoints < <(postfix_endpoints)
  endpoints=(-e '' "${endpoints[@]}")
  local -A services=()
  while IFS= read -r line; do
    services[$(awk '{ print $1 "/" $2 }' <<<"$line")]=$(tr -s ' \t' ' ' <<<"$line")
  done < <("${pc[@]}" -M 2>/dev/null)
  local entries=()
  while IFS= read -r line; do
    key=$(awk '{ print $1 "/" $2 }' <<<"$line")
    if [[ ${services[$key]:-} != "$(tr -s ' \t' ' ' <<<"$line")" ]]; then
      entries+=("$key=$line")
    fi
  done < <(snippet_settings_master "$SRC/postfix/master.cf.vmaild" | sed "${endpoints[@]}")
  if ((${#entries[@]})); then
    backup_once "$dir/master.cf"
    "${pc[@]}" -M "${entries[@]}"
    changed "/etc/postfix/master.cf" "${#entries[@]} services; backup master.cf.vmaild-backup"
    postfix_changed
  else
    ok "/etc/postfix/master.cf"
  fi
  # One postconf run to read and one to write: Postfix pauses ~2 s before reading a
  # main.cf modified in the last 2 s, so one run per setting would crawl.
  local -A current=()
  while IFS= read -r line; do
    name=${line%% =*} value=${line#*=}
    current[$name]=${value# }
  done < <("${pc[@]}" -n 2>/dev/null)
  local edits=() removals=()
  while IFS= read -r line; do
    name=${line%%=*} value=${line#*=}
    if [[ ! -v current[$name] || ${current[$name]} != "$value" ]]; then
      edits+=("$name=$value")
    fi
  done < <(snippet_settings "$SRC/postfix/main.cf.vmaild" "$SRC/postfix/main.cf.policy" \
             | sed "${endpoints[@]}")
  # Removed (main.cf.vmaild-backup keeps them):
  # * the seed's virtual_create_maildirsize / virtual_maildir_extended belong to the
  #   unofficial VDA patch: "unused parameter" on a stock Postfix (main.cf.policy);
  # * the legacy certificate settings (the seed's smtpd.cert, Debian's snakeoil) and
  #   smtpd_use_tls: smtpd_tls_chain_files replaces them, and Postfix warns when both
  #   are set;
  # * the seed's proxy_read_maps, which names the undefined virtual_mailbox_limit_maps
  #   (a warning at every start) and serves only the proxy:mysql: maps vmaild replaces.
  # (postconf -n leaves unknown parameters out, so main.cf itself is read for them.)
  for name in virtual_create_maildirsize virtual_maildir_extended smtpd_use_tls \
              smtpd_tls_cert_file smtpd_tls_key_file; do
    if grep -Eq "^$name[[:space:]]*=" "$dir/main.cf"; then removals+=("$name"); fi
  done
  if [[ ${current[proxy_read_maps]:-} == *virtual_mailbox_limit_maps* ]]; then
    removals+=(proxy_read_maps)
  fi
  if ((${#edits[@]} + ${#removals[@]})); then
    backup_once "$dir/main.cf"
    if ((${#edits[@]})); then "${pc[@]}" -e "${edits[@]}"; fi
    if ((${#removals[@]})); then "${pc[@]}" -X "${removals[@]}"; fi
    changed "/etc/postfix/main.cf" \
      "$((${#edits[@]} + ${#removals[@]})) settings; backup main.cf.vmaild-backup"
    postfix_changed
  else
    ok "/etc/postfix/main.cf"
  fi
}

snippet_settings_master() {  # master.cf snippet -> one line per service
  awk '
    /^[ \t]*#/ || /^[ \t]*$/ { next }
    /^[ \t]/ { sub(/^[ \t]+/, ""); line = line " " $0; next }
    { if (line != "") print line; line = $0 }
    END { if (line != "") print line }
  ' "$1"
}

# --------------------------------------------------------------------------- systemd
apply_systemd() {
  step="systemd"
  if [[ -n $ROOT ]]; then
    if command -v systemd-tmpfiles >/dev/null && [[ -d $ROOT/run/courier/authdaemon ]]; then
      systemd-tmpfiles --root="$ROOT" --create "$ROOT/etc/tmpfiles.d/vmaild.conf"
      ok "tmpfiles entry applied under $ROOT"
    fi
    enable_socket_unit --root="$ROOT"
    return
  fi
  if command -v systemd-tmpfiles >/dev/null && [[ -d /run/courier/authdaemon ]]; then
    systemd-tmpfiles --create /etc/tmpfiles.d/vmaild.conf
    ok "tmpfiles entry applied" "ACL u:vmail:x on /run/courier/authdaemon"
  fi
  if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    ok "systemctl daemon-reload"
  fi
  enable_socket_unit
}

# vmaild.socket holds Postfix's sockets across vmaild's restarts, vmaild-local.socket
# those of Courier's relays and vmailctl. Enabled here where vmaild.service is (an
# upgrade; a fresh install enables them with the last line), and not started: a vmaild
# from before them still has those paths, and would remove the socket unit's files when
# it stops. The restart the last line asks for does it in order: the running vmaild
# stops, the socket units start (vmaild.service requires them), then the new vmaild
# takes their sockets.
enable_socket_unit() {
  local sysroot=("$@") unit what
  command -v systemctl >/dev/null || return 0
  systemctl "${sysroot[@]}" is-enabled --quiet vmaild.service 2>/dev/null || return 0
  for unit in vmaild.socket vmaild-local.socket; do
    if systemctl "${sysroot[@]}" is-enabled --quiet "$unit" 2>/dev/null; then
      ok "$unit" "enabled"
      continue
    fi
    what="Postfix's sockets stay open while vmaild restarts"
    if [[ $unit == vmaild-local.socket ]]; then
      what="Courier's logins and lookups wait while vmaild restarts"
    fi
    systemctl "${sysroot[@]}" enable --quiet "$unit"
    changed "$unit" "enabled: $what"
    want_restart vmaild
  done
}

ensure_packages
ensure_accounts
install_package
install_conffiles
ensure_mailhome
ensure_socketdir
ensure_certificate
configure_courier
configure_postfix
apply_systemd

if ((changes == 0)); then
  log "done: nothing to change"
else
  log "done: $changes change(s)"
fi
if ((${#restart[@]})); then
  if [[ -z $ROOT ]] && systemctl is-enabled vmaild >/dev/null 2>&1; then
    # An upgrade: the admin already set vmaild up.
    log "next: systemctl restart ${restart[*]}"
  else
    log "next: set [database] in $ETC/vmaild.conf, then:" \
        "systemctl enable --now vmaild.socket vmaild-local.socket vmaild;" \
        "restart ${restart[*]}"
  fi
fi
