"""The only module that talks to nf_tables: apply, read back and remove our table.

Every change is one libnftables JSON transaction, so the kernel sees the old ruleset or the new
one and never anything in between. Errors are turned into messages that say what to install or
which kernel feature is missing, not libnftables' raw text alone.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

from controller.agent.netns import netns
from controller.agent.render import FAMILY, TABLE


class KernelError(RuntimeError):
    """nftables refused a transaction or could not be reached."""


class NftablesUnavailable(KernelError):
    """The libnftables library or its Python bindings are missing."""


_HINTS = (
    ("Operation not permitted", "this needs CAP_NET_ADMIN (run as root or grant NET_ADMIN)"),
    (
        "Protocol not supported",
        "the kernel has no nf_tables support (CONFIG_NF_TABLES, module nf_tables)",
    ),
    (
        "No such file or directory",
        "the kernel may lack a feature this ruleset needs; Kernel.missing_features() names which",
    ),
    ("Operation not supported", "the kernel lacks an nf_tables expression this ruleset uses"),
)


def _context() -> Any:
    try:
        import nftables  # python bindings over libnftables.so.1
    except ImportError as e:
        raise NftablesUnavailable(
            "the python nftables bindings are not installed "
            "(pip install pip-nftables, or Debian's python3-nftables)"
        ) from e
    try:
        nft = nftables.Nftables()
    except OSError as e:
        raise NftablesUnavailable(
            f"libnftables.so.1 cannot be loaded ({e}); install the libnftables1 package"
        ) from e
    nft.set_json_output(True)
    nft.set_handle_output(False)
    return nft


def _set_dry_run(nft: Any) -> None:
    """Make the context validate transactions in the kernel and then abort them.

    The bindings do not wrap ``nft_ctx_set_dry_run``; call it on their context handle.
    """
    lib = ctypes.CDLL("libnftables.so.1")
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_ctx_set_dry_run(nft._Nftables__ctx, True)


def _explain(action: str, error: str) -> str:
    hints = [hint for needle, hint in _HINTS if needle in error]
    text = f"nftables {action} failed: {error.strip()}"
    return text + ("\nhint: " + "\nhint: ".join(hints) if hints else "")


_PROBE_TABLE = {"family": FAMILY, "name": "nftpolicy-feature-probe"}
_IN_PROBE = {"family": FAMILY, "table": "nftpolicy-feature-probe"}

# One minimal ruleset per kernel feature the renderer relies on, validated in dry-run mode.
FEATURES: dict[str, list[dict[str, Any]]] = {
    "nf_tables inet family with a forward hook (nf_tables)": [
        {
            "add": {
                "chain": {
                    **_IN_PROBE,
                    "name": "f",
                    "type": "filter",
                    "hook": "forward",
                    "prio": 0,
                    "policy": "accept",
                }
            }
        },
    ],
    "conntrack state matching (nft_ct, nf_conntrack)": [
        {"add": {"chain": {**_IN_PROBE, "name": "c"}}},
        {
            "add": {
                "rule": {
                    **_IN_PROBE,
                    "chain": "c",
                    "expr": [
                        {
                            "match": {
                                "op": "in",
                                "left": {"ct": {"key": "state"}},
                                "right": ["established"],
                            }
                        },
                        {"accept": None},
                    ],
                }
            }
        },
    ],
    "verdict maps (nft_lookup)": [
        {"add": {"chain": {**_IN_PROBE, "name": "v"}}},
        {
            "add": {
                "map": {
                    **_IN_PROBE,
                    "name": "m",
                    "type": "ipv4_addr",
                    "map": "verdict",
                    "elem": [["10.0.0.1", {"jump": {"target": "v"}}]],
                }
            }
        },
    ],
    "concatenated interval sets (nft_set_pipapo, Linux >= 5.6)": [
        {
            "add": {
                "set": {
                    **_IN_PROBE,
                    "name": "s",
                    "type": ["ipv4_addr", "inet_proto", "inet_service"],
                    "flags": ["interval"],
                    "elem": [
                        {"concat": [{"range": ["10.0.0.0", "10.0.0.9"]}, 6, {"range": [80, 90]}]}
                    ],
                }
            }
        },
    ],
    "NFLOG logging (nfnetlink_log; or disable logging)": [
        {"add": {"chain": {**_IN_PROBE, "name": "l"}}},
        {"add": {"rule": {**_IN_PROBE, "chain": "l", "expr": [{"log": {"group": 100}}]}}},
    ],
}


class Kernel:
    """Our table in one network namespace (``None``: the current one)."""

    def __init__(self, netns_name: str | None = None) -> None:
        self.netns = netns_name

    def apply(self, ruleset: dict[str, Any]) -> None:
        """Run one JSON transaction (the renderer's output replaces the table atomically)."""
        with netns(self.netns):
            rc, _out, err = _context().json_cmd(ruleset)
        if rc != 0:
            raise KernelError(_explain("transaction", err or f"exit code {rc}"))

    def check(self, ruleset: dict[str, Any]) -> None:
        """Validate ``ruleset`` against the running kernel without committing it."""
        with netns(self.netns):
            nft = _context()
            _set_dry_run(nft)
            rc, _out, err = nft.json_cmd(ruleset)
        if rc != 0:
            raise KernelError(_explain("check", err or f"exit code {rc}"))

    def missing_features(
        self, features: dict[str, list[dict[str, Any]]] | None = None
    ) -> list[str]:
        """Names of the kernel features (of ``FEATURES``) this kernel refuses, checked in
        dry-run mode so nothing is changed."""
        missing = []
        for name, commands in (features or FEATURES).items():
            try:
                self.check({"nftables": [{"add": {"table": _PROBE_TABLE}}, *commands]})
            except NftablesUnavailable:
                raise
            except KernelError:
                missing.append(name)
        return missing

    def read(self) -> dict[str, Any] | None:
        """Our table as libnftables JSON, or ``None`` if it does not exist."""
        with netns(self.netns):
            rc, out, err = _context().cmd(f"list table {FAMILY} {TABLE}")
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise KernelError(_explain("read", err))
        result: dict[str, Any] = json.loads(out)
        return result

    def remove(self) -> bool:
        """Delete our table; ``False`` if there was none."""
        with netns(self.netns):
            rc, _out, err = _context().cmd(f"delete table {FAMILY} {TABLE}")
        if rc != 0:
            if "No such file or directory" in err:
                return False
            raise KernelError(_explain("remove", err))
        return True
