"""Traffic direction as seen from the pod a policy applies to."""

from __future__ import annotations

from enum import StrEnum

from controller.model.errors import ParseError
from controller.model.meta import show


class Direction(StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


BOTH = frozenset({Direction.INGRESS, Direction.EGRESS})


def parse_direction_set(value: str, obj: str, field: str) -> frozenset[Direction]:
    """``ingress``, ``egress``, ``all`` or ``none`` (case-insensitive; comma lists allowed)."""
    out: set[Direction] = set()
    for word in (w.strip().lower() for w in value.split(",")):
        if word == "ingress":
            out.add(Direction.INGRESS)
        elif word == "egress":
            out.add(Direction.EGRESS)
        elif word in ("all", "both"):
            out |= BOTH
        elif word in ("none", ""):
            continue
        else:
            raise ParseError(
                obj, field, f"unknown value {show(word)} (want ingress, egress or all)"
            )
    return frozenset(out)
