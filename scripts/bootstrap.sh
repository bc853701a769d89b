#!/usr/bin/env bash
# Set up everything nftpolicy needs on a fresh Debian/Ubuntu machine, idempotently:
# OS packages (nftables + libnftables1 for the python bindings, iproute2, conntrack, ...)
# and a virtualenv in .venv with the package and its test tools.
# Usage: scripts/bootstrap.sh   (quiet when everything is already there)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nftables libnftables1 iproute2 conntrack iptables ipset gcc procps socat)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing OS packages: ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: need Python >= 3.11, $PYTHON is $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f $stamp ]]; then
  echo "bootstrap: creating .venv and installing nftpolicy with test tools" >&2
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
