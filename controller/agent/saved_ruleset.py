"""The last applied ruleset, kept on the node so a rebooted node enforces before it can reach
the API server (``ARCHITECTURE.md``, failure behaviour).

What is kept is the renderer's libnftables JSON transaction exactly as the agent applied it,
not ``nft -j list table`` output: the transaction begins with ``add table; delete table; add
table`` and then defines everything, so loading it replaces whatever table is there in one
atomic transaction, like every apply. A listing has no such preamble (loading it merges into
an existing table), carries handles and counter values, and is not guaranteed to load back
unchanged (interval sets are printed merged, concatenations per kernel version).

File format (``encode`` / ``decode``, pure): one JSON header line, then the body, the ruleset
as compact JSON. The header names the format and its version, the node, the NodeRules
generation, and the body's length and SHA-256, so a truncated, corrupt or foreign file is
refused before the body is even parsed. The body must touch table ``inet nftpolicy`` only: a
file edited by hand cannot make the agent load rules anywhere else.

File I/O (``save`` / ``load``): ``DIR/ruleset-<node>.json`` (per node, so a directory that
several simulated nodes share, as on the local test cluster, holds one file each), written to
a temporary file in the same directory, fsynced, renamed over the old one and the directory
fsynced, so after a crash or power loss the file is the old one or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agent.render import FAMILY, TABLE

FORMAT = "nftpolicy-saved-ruleset"
VERSION = 1
DEFAULT_DIR = "/var/lib/nftpolicy"
HEADER_MAX = 4096  # bytes; a header line longer than this is not one of ours


class SavedRulesetError(ValueError):
    """The saved file is not a complete, intact ruleset of ours for this node."""


@dataclass(frozen=True)
class SavedRuleset:
    node: str
    generation: int | None
    ruleset: dict[str, Any]


def encode(saved: SavedRuleset) -> bytes:
    body = json.dumps(saved.ruleset, separators=(",", ":"), sort_keys=True).encode()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "node": saved.node,
        "generation": saved.generation,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return json.dumps(header, sort_keys=True).encode() + b"\n" + body


def decode(data: bytes, node: str) -> SavedRuleset:
    """The saved ruleset in ``data``, or ``SavedRulesetError`` saying what is wrong with it."""
    newline = data.find(b"\n", 0, HEADER_MAX)
    if newline < 0:
        raise SavedRulesetError("no header line (not a saved ruleset, or truncated)")
    try:
        header = json.loads(data[:newline])
    except ValueError as e:
        raise SavedRulesetError(f"unreadable header: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SavedRulesetError(f"not a {FORMAT} file")
    if header.get("version") != VERSION:
        raise SavedRulesetError(
            f"format version {header.get('version')!r}, this agent reads version {VERSION} "
            "(written by another nftpolicy version?)"
        )
    if header.get("node") != node:
        raise SavedRulesetError(f"saved for node {header.get('node')!r}, this is node {node!r}")
    body = data[newline + 1 :]
    if len(body) != header.get("length"):
        raise SavedRulesetError(
            f"body is {len(body)} bytes, the header says {header.get('length')} (truncated?)"
        )
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise SavedRulesetError("checksum mismatch (the file is corrupt)")
    try:
        ruleset = json.loads(body)
    except ValueError as e:
        raise SavedRulesetError(f"unreadable body: {e}") from None
    _check_ours(ruleset)
    generation = header.get("generation")
    if generation is not None and not isinstance(generation, int):
        raise SavedRulesetError(f"generation {generation!r} is not an integer")
    return SavedRuleset(node, generation, ruleset)


def _check_ours(ruleset: Any) -> None:
    """Every command of ``ruleset`` is an add or delete of table ``inet nftpolicy`` or of
    something in it, and it starts by replacing that table."""
    commands = ruleset.get("nftables") if isinstance(ruleset, dict) else None
    if not isinstance(commands, list) or not commands:
        raise SavedRulesetError('the body is not a {"nftables": [...]} transaction')
    ours = {"family": FAMILY, "name": TABLE}
    if commands[:2] != [{"add": {"table": ours}}, {"delete": {"table": ours}}]:
        raise SavedRulesetError(f"the transaction does not replace table {FAMILY} {TABLE}")
    for i, command in enumerate(commands):
        if not (isinstance(command, dict) and len(command) == 1):
            raise SavedRulesetError(f"command {i} is not one verb")
        ((verb, obj),) = command.items()
        if verb not in ("add", "delete") or not (isinstance(obj, dict) and len(obj) == 1):
            raise SavedRulesetError(f"command {i}: {verb!r} is not an add or delete of one object")
        ((kind, spec),) = obj.items()
        if not isinstance(spec, dict):
            raise SavedRulesetError(f"command {i}: {kind} is not an object")
        table = spec.get("name") if kind == "table" else spec.get("table")
        if spec.get("family") != FAMILY or table != TABLE:
            raise SavedRulesetError(f"command {i} touches {kind} outside table {FAMILY} {TABLE}")


def stand_in(priority: int) -> dict[str, Any]:
    """The table loaded at start when the saved file exists but cannot be used and the kernel
    has no table of ours (a reboot with a damaged disk): every new forwarded connection is
    counted and dropped until the first sync replaces it. Without the file the agent cannot tell
    which pods are isolated, and an unreadable file must not turn into "everything allowed".
    Traffic between the node and its own pods (kubelet probes) and the agent's own API
    connections (host network) do not pass the forward hook, so the first sync is not held up.
    """
    table = {"family": FAMILY, "table": TABLE}
    drop = {
        "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}],
        "comment": "saved ruleset unreadable: dropping new connections until the first sync",
    }
    return {
        "nftables": [
            {"add": {"table": {"family": FAMILY, "name": TABLE}}},
            {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
            {"add": {"table": {"family": FAMILY, "name": TABLE}}},
            {
                "add": {
                    "chain": {
                        **table,
                        "name": "forward",
                        "type": "filter",
                        "hook": "forward",
                        "prio": priority,
                        "policy": "accept",
                    }
                }
            },
            {
                "add": {
                    "rule": {
                        **table,
                        "chain": "forward",
                        "expr": [
                            {
                                "match": {
                                    "op": "in",
                                    "left": {"ct": {"key": "state"}},
                                    "right": ["established", "related"],
                                }
                            },
                            {"accept": None},
                        ],
                    }
                }
            },
            {"add": {"rule": {**table, "chain": "forward", **drop}}},
        ]
    }


# ---- file I/O (thin) ---------------------------------------------------------------------------


def path(directory: Path, node: str) -> Path:
    if not node or "/" in node or node.startswith("."):
        raise SavedRulesetError(f"node name {node!r} cannot name a file")
    return directory / f"ruleset-{node}.json"


def save(directory: Path, saved: SavedRuleset) -> None:
    """Replace the node's file atomically and durably (raises ``OSError``)."""
    data = encode(saved)
    target = path(directory, saved.node)
    for stale in directory.glob(f".{target.name}.*"):  # left by a crash mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def load(directory: Path, node: str) -> SavedRuleset | None:
    """The saved ruleset; ``None`` if there is none; ``SavedRulesetError`` if it cannot be
    read or is not intact."""
    file = path(directory, node)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SavedRulesetError(f"cannot read {file}: {e}") from None
    try:
        return decode(data, node)
    except SavedRulesetError as e:
        raise SavedRulesetError(f"{file}: {e}") from None


def remove(directory: Path, node: str) -> bool:
    """Delete the node's saved ruleset (uninstall); ``False`` if there was none."""
    try:
        path(directory, node).unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(directory)
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename (or unlink) itself durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
