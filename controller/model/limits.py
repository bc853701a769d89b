"""Per-policy size limits: what one NetworkPolicy may cost nftpolicy, and what happens beyond.

The API server bounds a NetworkPolicy only by its encoded size (etcd's 1.5 MiB request limit
and a 3 MiB request body), which still admits ~88,000 IPv4 ``except`` entries, ~72,000 /32
peers or ~87,000 ports in one object (measured against kube-apiserver v1.34). Everything
nftpolicy derives from a policy is linear in these counts, except what this module bounds:

* ``ipBlock`` entries (each ``cidr`` and each ``except``) become one AddressGroup per rule,
  published as a custom resource that etcd must accept. IPv6 entries are up to twice as long
  as IPv4 ones in that object, so they count double. At the limit the group stays under
  ~1 MB (48 bytes per entry at the very worst), well below 1.5 MiB.
* rules and ports are copied into the NodeRules object of every node where the policy
  applies, next to every other policy there: at the limits one policy adds at most ~200 KB
  to it (an empty rule, 3 bytes in the policy, is ~60 bytes there).
* each peer (all ipBlock peers of one rule counting as one) is an address group, and each
  egress named port of a rule multiplies that: a group per (peer, port name). Every group is
  a custom resource that tracks its members in the whole cluster, so their number is bounded.

A policy over a limit is not rejected (the API server accepted it) and never widens access:
it is enforced *fail closed*, isolating the pods it selects for its policyTypes while allowing
nothing itself. The compiler reports why (``Compiler.policy_problems()``); the reference
evaluator (``semantics.py``) reads the same definition, so both agree on every verdict.
"""

from __future__ import annotations

from controller.model.direction import Direction
from controller.model.policy import NetworkPolicy

IPBLOCK_ENTRIES_MAX = 40_000  # cidr + except entries of all ipBlocks, IPv6 counting double
PORTS_MAX = 5_000  # entries of ``ports`` over all rules
RULES_MAX = 1_000  # ingress and egress rules
PEER_GROUPS_MAX = 1_000  # address and named-port groups a policy refers to


def ipblock_entries(policy: NetworkPolicy) -> int:
    """Every ``cidr`` and ``except`` of the policy's ipBlocks, an IPv6 one counting as two."""
    total = 0
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for rule in policy.rules(direction):
            for peer in rule.peers:
                if peer.ip_block is not None:
                    weight = 1 if peer.ip_block.cidr.version == 4 else 2
                    total += weight * (1 + len(peer.ip_block.excepts))
    return total


def rules(policy: NetworkPolicy) -> int:
    return len(policy.ingress) + len(policy.egress)


def port_entries(policy: NetworkPolicy) -> int:
    return sum(len(r.ports) for d in (Direction.INGRESS, Direction.EGRESS) for r in policy.rules(d))


def peer_groups(policy: NetworkPolicy) -> int:
    """Upper bound of the groups the policy refers to, counted per rule as written.

    A rule's peers are its selector peers plus one for all its ipBlock peers together; each
    is an address group, and for each egress named port also a port group (one for "any
    peer" when the rule lists no peers).
    """
    total = 0
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for rule in policy.rules(direction):
            selectors = sum(1 for p in rule.peers if p.ip_block is None)
            blocks = any(p.ip_block is not None for p in rule.peers)
            named = (
                sum(1 for p in rule.ports if isinstance(p.port, str))
                if direction is Direction.EGRESS
                else 0
            )
            peers = selectors + blocks
            total += peers + max(1, peers) * named
    return total


def too_large(policy: NetworkPolicy) -> str | None:
    """Why ``policy`` is over a limit (one line), or None when it is within all of them."""
    for count, limit, what in (
        (ipblock_entries(policy), IPBLOCK_ENTRIES_MAX, "ipBlock entries (IPv6 counting double)"),
        (port_entries(policy), PORTS_MAX, "port entries"),
        (rules(policy), RULES_MAX, "rules"),
        (peer_groups(policy), PEER_GROUPS_MAX, "peer groups (peers x egress named ports)"),
    ):
        if count > limit:
            return (
                f"too large: {count:,} {what}, limit {limit:,}; enforced fail-closed: "
                "its pods stay isolated and it allows nothing"
            )
    return None
