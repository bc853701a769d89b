"""Pure decisions about one custom resource: is it published as desired, and which write
makes it so.

Only ``metadata.labels`` and ``spec`` are compared: everything else on a published object
(status, resourceVersion, managed fields) belongs to the API server or the agents. A restart
that computes the same desired state therefore plans no writes at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from controller.resources import span_label

Key = tuple[str, str]  # (plural, name)
Body = Mapping[str, Any]


@dataclass(frozen=True)
class Write:
    verb: Literal["create", "replace", "delete"]
    plural: str
    name: str
    body: Body | None = None  # create/replace: the desired object
    current: Body | None = None  # replace: what is published now

    @property
    def key(self) -> Key:
        return (self.plural, self.name)

    def __str__(self) -> str:
        return f"{self.verb} {self.plural}/{self.name}"


def labels(body: Body) -> Mapping[str, str]:
    return body.get("metadata", {}).get("labels") or {}


def same(a: Body | None, b: Body | None) -> bool:
    """Whether two bodies (``None``: absent) say the same (labels and spec)."""
    if a is None or b is None:
        return a is b
    return dict(labels(a)) == dict(labels(b)) and _absent_nulls(a.get("spec")) == _absent_nulls(
        b.get("spec")
    )


def _absent_nulls(value: Any) -> Any:
    """``value`` without null members: replaces are JSON merge patches, in which a null
    deletes the field, so a field we send as null is stored absent (a create stores it)."""
    if isinstance(value, Mapping):
        return {k: _absent_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_absent_nulls(v) for v in value]
    return value


def write_for(plural: str, name: str, desired: Body | None, current: Body | None) -> Write | None:
    """The write that turns ``current`` into ``desired`` (``None``: nothing to do)."""
    if same(desired, current):
        return None
    if desired is None:
        return Write("delete", plural, name)
    if current is None:
        return Write("create", plural, name, desired)
    return Write("replace", plural, name, desired, current)


def with_span(group: Body, nodes: Iterable[str]) -> Body:
    """``group`` with the span labels of ``nodes`` added (nodes whose published rules still
    refer to it keep seeing it until their rules move on)."""
    extra = {span_label(n): "" for n in nodes}
    if all(k in labels(group) for k in extra):
        return group
    meta = group.get("metadata", {})
    return {**group, "metadata": {**meta, "labels": {**labels(group), **extra}}}
