#!/usr/bin/env bash
# The project's test command: set up (scripts/bootstrap.sh), lint, type-check, then run the
# unit and integration tests. Integration tests need root (network namespaces, nftables).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k selector
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
echo "== ruff" >&2
.venv/bin/ruff check controller tests bench
echo "== mypy --strict controller" >&2
.venv/bin/mypy controller
echo "== pytest" >&2
if [[ $# -eq 0 ]]; then set -- tests; fi
.venv/bin/python -m pytest -q "$@"
