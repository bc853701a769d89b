"""End-to-end tests on a kind cluster (GitHub Actions: .github/workflows/e2e.yml).

Run with ``pytest e2e`` on a machine with docker, kind, kubectl and helm; without them every
test skips (or fails, with ``NFTPOLICY_E2E_REQUIRED=1``, as in CI). The pure parts (kind
config, manifests, probe commands, expectations) are in ``kind_config``, ``netpol`` and
``install``, importable anywhere and unit-tested in ``tests/unit/test_e2e_pure.py``.
"""
