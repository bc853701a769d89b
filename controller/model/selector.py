"""Kubernetes label selectors (metav1.LabelSelector): parsing and matching.

A selector is the AND of its requirements. ``matchLabels`` entries become ``In`` requirements
with one value, exactly as the API machinery converts them, so there is one matching rule.
The empty selector selects everything; a missing selector is represented by ``None`` by callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.model.meta import (
    LIST,
    STRING,
    STRING_MAP,
    STRINGS,
    Reader,
    Schema,
    child,
    is_label_value,
    is_qualified_name,
    show,
)

Labels = Mapping[str, str]

LABEL_SELECTOR: Schema = {"matchExpressions": LIST, "matchLabels": STRING_MAP}
REQUIREMENT: Schema = {"key": STRING, "operator": STRING, "values": STRINGS}


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, order=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        if self.operator is Operator.IN:
            return labels.get(self.key) in self.values
        if self.operator is Operator.NOT_IN:
            # NotIn also matches objects that lack the key (Kubernetes semantics).
            return labels.get(self.key) not in self.values
        if self.operator is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    """A normalized selector: requirements sorted and de-duplicated, values sorted."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        for r in self.requirements:  # noqa: SIM110 - a plain loop: the compiler's hottest call
            if not r.matches(labels):
                return False
        return True

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def required_pairs(self) -> tuple[tuple[str, str], ...]:
        """Label pairs an object must carry to match (``In`` with a single value).

        Indexes use these to look up only the selectors a labelled object could match.
        """
        return tuple(
            (r.key, r.values[0])
            for r in self.requirements
            if r.operator is Operator.IN and len(r.values) == 1
        )

    def required_keys(self) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
        """For each positive requirement (``In``, ``Exists``): its key and the values one of
        which an object must carry (``None``: any value). Objects lacking them cannot match."""
        out: list[tuple[str, tuple[str, ...] | None]] = []
        for r in self.requirements:
            if r.operator is Operator.IN:
                out.append((r.key, r.values))
            elif r.operator is Operator.EXISTS:
                out.append((r.key, None))
        return tuple(out)

    def canonical(self) -> list[list[Any]]:
        """A JSON-ready form that is equal for equal selectors (used to name groups)."""
        return [[r.key, str(r.operator), list(r.values)] for r in self.requirements]

    def __str__(self) -> str:
        if not self.requirements:
            return "{}"
        parts = []
        for r in self.requirements:
            if r.operator is Operator.IN and len(r.values) == 1:
                parts.append(f"{r.key}={r.values[0]}")
            elif r.operator is Operator.EXISTS:
                parts.append(r.key)
            elif r.operator is Operator.DOES_NOT_EXIST:
                parts.append(f"!{r.key}")
            else:
                op = "in" if r.operator is Operator.IN else "notin"
                parts.append(f"{r.key} {op} ({','.join(r.values)})")
        return ",".join(parts)


EVERYTHING = LabelSelector()


def parse_labels(raw: Any, reader: Reader, field: str) -> dict[str, str]:
    """Validate a label map (metadata.labels, matchLabels); a null value is ``""`` as in Go."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise reader.error(field, f"must be a map of strings, got {show(raw)}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not is_qualified_name(key):
            raise reader.error(
                field,
                f"invalid label key {show(key)}: want an optional DNS subdomain and '/', then "
                "at most 63 of [-A-Za-z0-9_.] starting and ending alphanumeric",
            )
        if value is None:
            value = ""
        if not isinstance(value, str) or not is_label_value(value):
            raise reader.error(
                child(field, key),
                f"invalid label value {show(value)}: want at most 63 of [-A-Za-z0-9_.] "
                "starting and ending alphanumeric, or empty",
            )
        out[key] = value
    return out


def parse_selector(raw: Any, reader: Reader, field: str) -> LabelSelector:
    """Parse a metav1.LabelSelector dict; ``{}`` and ``None`` values inside mean "empty"."""
    if raw is None:
        return EVERYTHING
    selector = reader.section(raw, field, LABEL_SELECTOR)
    reqs: set[Requirement] = set()
    labels = parse_labels(selector.get("matchLabels"), reader, f"{field}.matchLabels")
    for key, value in labels.items():
        reqs.add(Requirement(key, Operator.IN, (value,)))
    exprs = reader.items(selector.get("matchExpressions"), f"{field}.matchExpressions")
    for i, expr in enumerate(exprs):
        reqs.add(_parse_requirement(expr, reader, f"{field}.matchExpressions[{i}]"))
    return LabelSelector(tuple(sorted(reqs)))


def _parse_requirement(raw: Any, reader: Reader, field: str) -> Requirement:
    expr = reader.section(raw, field, REQUIREMENT)
    key = expr.get("key")
    if not isinstance(key, str) or not is_qualified_name(key):
        raise reader.error(f"{field}.key", f"invalid label key {show(key)}")
    try:
        op = Operator(expr.get("operator") or "")
    except ValueError:
        raise reader.error(
            f"{field}.operator",
            f"unknown operator {show(expr.get('operator'))} "
            "(want In, NotIn, Exists or DoesNotExist)",
        ) from None
    values: list[str] = expr.get("values") or []
    for v in values:
        if not is_label_value(v):
            raise reader.error(f"{field}.values", f"invalid label value {show(v)}")
    if op in (Operator.IN, Operator.NOT_IN) and not values:
        raise reader.error(f"{field}.values", f"must be non-empty for operator {op}")
    if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        raise reader.error(f"{field}.values", f"must be empty for operator {op}")
    return Requirement(key, op, tuple(sorted(set(values))))
