#!/usr/bin/env bash
# Regenerate the hash-pinned lock files in requirements/ from pyproject.toml, with uv:
#   requirements/build.lock    pip and the build backend ([build-system].requires)
#   requirements/runtime.lock  [project].dependencies            (the Dockerfile installs these)
#   requirements/test.lock     the same plus the [test] extra    (scripts/bootstrap.sh installs these)
# The test lock is constrained by the runtime lock, so the image and the test venv run the same
# versions. Locks are universal (markers, every platform's files hashed) for Python >= 3.11 and
# wheels only: installing them never runs a build step, whose build dependencies pip would fetch
# unhashed. The script then checks that every pinned version has a wheel for CPython 3.11 on
# glibc 2.36 (Debian bookworm, the image's base) for x86_64 and aarch64.
#
# Usage: scripts/lock.sh                      keep the current pins where pyproject.toml allows
#        scripts/lock.sh --upgrade            newest versions of everything
#        scripts/lock.sh --upgrade-package X  newest X (other arguments also go to uv pip compile)
# Needs network access to PyPI. uv comes from $UV, else PATH, else it is installed (hash-checked,
# from requirements/tools.lock) into .cache/lock-tools.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9 # the uv that wrote the locks; bump it with requirements/tools.lock
PLATFORMS=(x86_64-manylinux_2_36 aarch64-manylinux_2_36)

uv=${UV:-$(command -v uv || true)}
if [[ -z $uv ]]; then
  tools=.cache/lock-tools
  if [[ ! -x $tools/bin/uv ]]; then
    echo "lock: installing uv $UV_VERSION into $tools" >&2
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q --require-hashes --only-binary :all: -r requirements/tools.lock
  fi
  uv=$tools/bin/uv
fi
echo "lock: $("$uv" --version) (pinned: $UV_VERSION)" >&2

common=(--universal --python-version 3.11 --only-binary :all: --generate-hashes
  --custom-compile-command scripts/lock.sh --quiet "$@")

# [build-system].requires is the source of truth for the build backend; pip is locked with it
# so that every machine installs with the same (hash-checked) pip.
build_requires=$(python3 -c 'import sys, tomllib
print("\n".join(["pip", *tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]]))')
"$uv" pip compile - "${common[@]}" -o requirements/build.lock <<<"$build_requires"
"$uv" pip compile pyproject.toml "${common[@]}" -o requirements/runtime.lock
"$uv" pip compile pyproject.toml --extra test -c requirements/runtime.lock "${common[@]}" \
  -o requirements/test.lock
"$uv" pip compile - "${common[@]}" -o requirements/tools.lock <<<"uv==$UV_VERSION"

for lock in requirements/{build,runtime,test}.lock; do
  for platform in "${PLATFORMS[@]}"; do
    # Resolving the lock for one platform, wheels only, fails when a pinned version has no
    # wheel for it (uv names the platforms it has wheels for).
    if ! "$uv" pip compile "$lock" --python-version 3.11 --python-platform "$platform" \
      --only-binary :all: --quiet -o /dev/null; then
      echo "lock: $lock has a version without a CPython 3.11 $platform wheel (above)" >&2
      exit 1
    fi
  done
done
echo "lock: requirements/*.lock written; wheels checked for ${PLATFORMS[*]}" >&2
