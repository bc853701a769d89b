#!/usr/bin/env bash
# The main job on a local sandbox: set up everything (scripts/bootstrap.sh; the control-plane
# binaries are built from Go modules on the first run), then `nftpolicy sandbox`: a real
# kube-apiserver, network-namespace nodes and pods, the operator and one agent per node, and
# the reachability matrix before and after the NetworkPolicies of examples/ (or -f DIR).
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/nftpolicy sandbox "$@"
