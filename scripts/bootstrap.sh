#!/usr/bin/env bash
# Set up everything nftpolicy needs on a fresh Debian/Ubuntu machine, idempotently:
# OS packages (nftables + libnftables1 for the python bindings, iproute2, conntrack, ...)
# and a virtualenv in .venv with the package and its test tools, as locked in requirements/.
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
# The Python dependencies come from the hash-pinned locks in requirements/ (scripts/lock.sh
# writes them from pyproject.toml): pip refuses any file whose hash is not in the lock, and
# --only-binary keeps build steps (and their unpinned build dependencies) out. The package
# itself is installed without dependencies and built with the locked setuptools
# (--no-build-isolation). The stamp covers the locks, so a changed lock reinstalls.
stamp=.venv/.installed-$(cat pyproject.toml requirements/build.lock requirements/test.lock | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
  echo "bootstrap: installing requirements/{build,test}.lock and nftpolicy (editable) into .venv" >&2
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --require-hashes --only-binary :all: -r requirements/build.lock
  .venv/bin/pip install -q --require-hashes --only-binary :all: -r requirements/test.lock
  .venv/bin/pip install -q --no-deps --no-build-isolation --check-build-dependencies -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
