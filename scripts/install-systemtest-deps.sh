#!/usr/bin/env bash
# What `make systemtest` needs on this machine (Debian 12, as root): systemd-nspawn to boot
# hosts, debootstrap to make their base image, nsenter (util-linux) to run commands in them.
# apt runs only when something is missing.
set -euo pipefail
PACKAGES=(systemd-container debootstrap util-linux)
missing=()
for pkg in "${PACKAGES[@]}"; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  printf 'install-systemtest-deps: installing %s\n' "${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
