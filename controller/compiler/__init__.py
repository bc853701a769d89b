"""Model -> address groups + per-node rules (pure, incremental)."""

from __future__ import annotations

from collections.abc import Iterable

from controller.compiler.compiler import Changes, Compiler
from controller.compiler.ir import Group, NodeRules
from controller.model import ApiObject, Namespace, Node
from controller.model.config import DefaultDeny

__all__ = ["Changes", "Compiler", "compile_objects", "groups_for"]


def compile_objects(
    objects: Iterable[ApiObject], default_deny: DefaultDeny | None = None
) -> Compiler:
    """A compiler loaded with ``objects`` (namespaces first, so selectors see their labels)."""
    compiler = Compiler(default_deny)
    ordered = sorted(objects, key=lambda o: 0 if isinstance(o, Namespace | Node) else 1)
    for obj in ordered:
        compiler.upsert(obj)
    return compiler


def groups_for(compiler: Compiler, rules: NodeRules) -> dict[str, Group]:
    """The groups ``rules`` refer to, materialized."""
    out: dict[str, Group] = {}
    for name in rules.groups():
        group = compiler.group(name)
        if group is not None:
            out[name] = group
    return out
