"""Compile incrementally and apply every node's ruleset into its node namespace.

This is the data path the operator and agents will drive, minus the API server: events go
into one ``Compiler``, and ``sync()`` renders and applies each node's table in one
libnftables transaction inside the node's network namespace.
"""

from __future__ import annotations

from controller.agent.kernel import Kernel
from controller.agent.render import RenderOptions, render
from controller.compiler import Compiler, groups_for
from controller.model import ApiObject
from controller.model.config import DefaultDeny
from controller.testing.netns import NetnsCluster


class Enforcer:
    def __init__(
        self, cluster: NetnsCluster, nodes: list[str], default_deny: DefaultDeny | None = None
    ) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.compiler = Compiler(default_deny)
        self.kernels = {n: Kernel(cluster.node_netns(n)) for n in nodes}
        self.options = RenderOptions(log_group=None)

    def feed(self, obj: ApiObject) -> None:
        self.compiler.upsert(obj)

    def ruleset(self, node: str) -> dict[str, object]:
        rules = self.compiler.node_rules(node)
        return render(rules, groups_for(self.compiler, rules), self.options)

    def sync(self) -> None:
        """Apply the rulesets of every node that may have changed since the last sync.

        Conntrack is flushed afterwards: tests probe *new* connections, and a UDP probe that
        happens to reuse the 5-tuple of an earlier, then-allowed probe would otherwise pass as
        an established flow. (Removing exactly the flows a change no longer allows is the
        agent's job; see the control-plane issue.)
        """
        changes = self.compiler.take_changes()
        for node, kernel in self.kernels.items():
            rules = self.compiler.node_rules(node)
            if node in changes.nodes or rules.groups() & changes.groups:
                kernel.apply(render(rules, groups_for(self.compiler, rules), self.options))
        self.flush_conntrack()

    def flush_conntrack(self) -> None:
        for node in self.nodes:
            self.cluster.run_in(self.cluster.node_netns(node), ["conntrack", "-F"])

    def clear(self) -> None:
        for kernel in self.kernels.values():
            kernel.remove()
        self.flush_conntrack()
