#!/usr/bin/env bash
# The main job on a local sandbox: set up (scripts/bootstrap.sh), then build examples/ (or
# the manifests given with -f DIR) as network namespaces and show enforcement with real
# connections. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
