#!/usr/bin/env bash
# The project's test command: set up (scripts/bootstrap.sh, scripts/testenv.sh), lint,
# type-check, then run the unit and integration tests. Integration tests need root (network
# namespaces, nftables) and Go >= 1.24 for the test control plane.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k selector
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The test control plane (etcd, kube-apiserver, kubectl, helm) built from Go modules once and
# cached (~11 min the first time on 2 cores, instant afterwards); progress goes to stderr.
echo "== test control plane binaries" >&2
bin=$(scripts/testenv.sh | tail -n 1)
export NFTPOLICY_TESTENV_BIN=$bin
echo "== ruff" >&2
.venv/bin/ruff check controller tests bench
echo "== mypy --strict controller" >&2
.venv/bin/mypy controller
echo "== pytest" >&2
if [[ $# -eq 0 ]]; then set -- tests; fi
.venv/bin/python -m pytest -q "$@"
