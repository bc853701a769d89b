"""The only module that talks to nf_tables: apply, read back and remove our table.

Every change is one libnftables JSON transaction, so the kernel sees the old ruleset or the new
one and never anything in between. Errors are turned into messages that say what to install or
which kernel feature is missing, not libnftables' raw text alone.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

from controller.agent.literal import host_names
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
    nft.set_reversedns_output(False)  # never look addresses up when listing
    _set_no_dns_input(nft)
    return nft


_NFT_CTX_INPUT_NO_DNS = 1  # libnftables.h, nftables >= 1.0.7


def _set_no_dns_input(nft: Any) -> None:
    """Tell libnftables never to resolve a name given where an address is expected.

    The flag exists since nftables 1.0.7 and the bindings do not wrap it; Debian bookworm's
    1.0.6 has no way to say it, so every ruleset is also checked by ``literal.host_names``
    before libnftables sees it (``_refuse_names``).
    """
    lib = ctypes.CDLL("libnftables.so.1")
    if not hasattr(lib, "nft_ctx_input_set_flags"):
        return
    lib.nft_ctx_input_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_input_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_input_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    ctx = nft._Nftables__ctx
    lib.nft_ctx_input_set_flags(ctx, lib.nft_ctx_input_get_flags(ctx) | _NFT_CTX_INPUT_NO_DNS)


def _refuse_names(ruleset: dict[str, Any]) -> None:
    names = host_names(ruleset)
    if names:
        shown = ", ".join(repr(n) for n in names[:5])
        raise KernelError(
            f"refusing a ruleset with host names where addresses belong ({shown}): the agent "
            "never resolves names; addresses must be numeric"
        )


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
        _refuse_names(ruleset)
        with netns(self.netns):
            rc, _out, err = _context().json_cmd(ruleset)
        if rc != 0:
            raise KernelError(_explain("transaction", err or f"exit code {rc}"))

    def check(self, ruleset: dict[str, Any]) -> None:
        """Validate ``ruleset`` against the running kernel without committing it."""
        _refuse_names(ruleset)
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
        out = self._cmd_unless_absent(f"list table {FAMILY} {TABLE}", "read")
        if out is None:
            return None
        result: dict[str, Any] = json.loads(out)
        return result

    def counter_packets(self, name: str) -> int | None:
        """Packets counted so far by the named counter ``name`` of our table; ``None`` if
        the table or the counter does not exist."""
        out = self._cmd_unless_absent(f"list counter {FAMILY} {TABLE} {name}", "read")
        if out is None:
            return None
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        return None

    def remove(self) -> bool:
        """Delete our table; ``False`` if there was none."""
        return self._cmd_unless_absent(f"delete table {FAMILY} {TABLE}", "remove") is not None

    def _cmd_unless_absent(self, command: str, what: str) -> str | None:
        """Run ``command`` in our netns: its output, or ``None`` if what it names does not
        exist; any other failure raises ``KernelError`` explaining ``what`` failed."""
        with netns(self.netns):
            rc, out, err = _context().cmd(command)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise KernelError(_explain(what, err))
        return str(out)
