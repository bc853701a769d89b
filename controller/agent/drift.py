"""A digest of our table as the kernel lists it, to notice any change made behind our back.

The agent lists the table right after each apply and remembers the digest; the periodic drift
check lists it again and repairs on any difference: a rule added or removed, a set flushed, a
chain's policy changed, the table deleted. What the kernel changes by itself is left out, so
packets passing never look like drift: rule handles (they change on every replace), counter
values and libnftables' ``metainfo`` (its version).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ABSENT = "absent"  # the digest of a missing table


def normalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (None if k == "counter" else normalize(v)) for k, v in value.items() if k != "handle"
        }
    if isinstance(value, list):
        return [normalize(v) for v in value if not (isinstance(v, dict) and "metainfo" in v)]
    return value


def digest(listing: dict[str, Any] | None) -> str:
    """SHA-256 of the normalized listing (``Kernel.read()``); ``ABSENT`` for no table."""
    if listing is None:
        return ABSENT
    text = json.dumps(normalize(listing), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
