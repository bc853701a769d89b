"""The smallest practical JSON Patch (RFC 6902) from one custom-resource spec to another (pure).

A NodeRules spec holds every local pod and every policy of its node; a policy spanning 300
nodes changes one entry of each, and a merge patch (which replaces a list whole) would send
all 300 specs in full (MBs). The ops here touch only what changed: objects are compared key by
key, lists element by element (``difflib`` over each element's canonical JSON, so an inserted
or removed entry is one op however long the list is). Callers guard the patch with a ``test``
of the resourceVersion it was computed against, so it never applies to anything else.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

Op = dict[str, Any]


def diff(old: Any, new: Any, path: str = "") -> list[Op]:
    """Ops that turn ``old`` into ``new`` (applied in order)."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[Op] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in new.items():
            child = f"{path}/{_escape(key)}"
            if key not in old:
                ops.append({"op": "add", "path": child, "value": value})
            else:
                ops.extend(diff(old[key], value, child))
        return ops
    if isinstance(old, list) and isinstance(new, list):
        return _list_diff(old, new, path)
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path, "value": new}]


def _list_diff(old: list[Any], new: list[Any], path: str) -> list[Op]:
    a = [_canonical(x) for x in old]
    b = [_canonical(x) for x in new]
    ops: list[Op] = []
    # Work from the end so the indexes of the blocks still to do stay valid.
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(blocks):
        if tag == "equal":
            continue
        if tag == "replace" and i2 - i1 == j2 - j1:
            for k in range(i2 - i1 - 1, -1, -1):
                ops.extend(diff(old[i1 + k], new[j1 + k], f"{path}/{i1 + k}"))
            continue
        ops.extend({"op": "remove", "path": f"{path}/{i}"} for i in range(i2 - 1, i1 - 1, -1))
        ops.extend(
            {"op": "add", "path": f"{path}/{i1 + k}", "value": new[j1 + k]} for k in range(j2 - j1)
        )
    return ops


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
