"""Every ``It(...)`` of upstream ``test/e2e/network/netpol/network_policy.go`` as data.

Source and scope
----------------
Ported from the revision of ``network_policy.go`` that still probes the full 3x3 pod model in
every case (``initializeResources(ctx, f, protocols, ports)``, ginkgo v2 ``f.It(..., feature.
NetworkPolicy, ...)``). The newest upstream creates only the pods each case looks at (e.g.
``"x/a", "x/b", "y/a"``) and consequently dropped a few expectations about pods it no longer
creates (e.g. ``x/c`` in "should enforce policy to allow ingress traffic for a target"); the
9x9 revision is the one whose tables cover our 81 pairs, so its expectations are used verbatim.
Where the two revisions differ in anything else, the newer one is followed and the difference
is noted at the case (only the ipBlock "except" cases: their large CIDR is the canonical /4
around x/b, upstream ``makeLargeCIDRForIP``, instead of the non-canonical ``"<x/a IP>/4"``).

Three contexts are ported:

* ``MAIN_CONTEXT`` -- "NetworkPolicy between server and client" (42 cases, TCP apart from one
  case that also probes UDP);
* ``UDP_CONTEXT`` -- "NetworkPolicy between server and client using UDP" (3 cases; upstream
  describe "Netpol [LinuxOnly]");
* ``SCTP_CONTEXT`` -- "... using SCTP" (3 cases) is *not* ported: the kernel we test on has no
  SCTP sockets. Their names are in :data:`SKIPPED_SCTP`. The two main-context cases about SCTP
  *policies* ("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'..." and "should
  properly isolate pods that are selected by a policy allowing SCTP...") only probe TCP and are
  ported.

Names
-----
``Case.name`` is the upstream ``It`` text verbatim (without the ``[Feature:NetworkPolicy]``
label). The UDP context reuses three ``It`` texts of the main context, so for cases outside
``MAIN_CONTEXT`` the name is ``"<Context text> <It text>"`` -- exactly how ginkgo composes the
full spec name (minus the ``[sig-network] Netpol`` describe prefix), and unique. ``Case.it``
and ``Case.context`` give the two parts.

Running a case
--------------
Every case starts from the pristine model: ``model.namespaces()``/``model.pods()`` with their
default labels and *no* NetworkPolicy anywhere (upstream creates fresh namespaces per case and
its ``DeferCleanup`` label resets exist for the same reason). For each :class:`Step`, apply its
``actions`` in order, wait for enforcement to converge, then run each :class:`Probe`: connect
from every model pod to every model pod (including itself) on ``probe.port``/``probe.protocol``
and compare with ``probe.expected`` (``Reachability.compare`` ignores src == dst cells, as
upstream does). Upstream probes through each pod's Service ClusterIP; we probe pod IPs
directly, which is equivalent for NetworkPolicy purposes (policies see the post-DNAT pod IP).

Actions
-------
* :class:`ApplyPolicy` -- create *or replace* (upstream ``CreatePolicy``/``UpdatePolicy``) the
  NetworkPolicy ``metadata.namespace``/``metadata.name``. Either a literal ``policy`` dict or,
  when the policy depends on pod IPs (ipBlock cases), a ``policy_factory(addresses)``;
  :meth:`ApplyPolicy.render` returns the concrete dict either way. Policies are given as
  upstream submits them, i.e. *before* API-server defaulting: a port without ``protocol``
  means TCP, and ``policyTypes`` is always explicit, as upstream's builders set it.
* :class:`DeletePolicy` -- delete one policy (upstream "cleanNetworkPolicies" after a case
  that created exactly that policy).
* :class:`SetNamespaceLabels` / :class:`SetPodLabels` -- replace the object's *complete* label
  set with ``labels`` (upstream ``AddNamespaceLabel``/``AddPodLabels`` merge; the merge result
  is spelled out here so no runner has to guess).

Addresses and families
----------------------
``policy_factory`` receives a :class:`~tests.netpol_upstream.model.Addresses` for the family
the runner is about to probe; all ipBlock cases are written family-agnostically (host CIDRs are
/32 or /128 as upstream's ``hostMask``), so every case has ``ipv6_ok=True``. A dual-stack runner
runs IP-dependent cases once per family. The "except" cases additionally assume, like
upstream, that all pod IPs share x/b's /4 (``Addresses.large_cidr``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.netpol_upstream.model import (
    ALL_PODS,
    NAMESPACE_LABEL_KEY,
    Addresses,
    Peer,
    Reachability,
    namespace_labels,
)

__all__ = [
    "CASES",
    "MAIN_CONTEXT",
    "SCTP_CONTEXT",
    "SKIPPED",
    "SKIPPED_SCTP",
    "UDP_CONTEXT",
    "Action",
    "Addresses",
    "ApplyPolicy",
    "Case",
    "DeletePolicy",
    "PolicyFactory",
    "Probe",
    "SetNamespaceLabels",
    "SetPodLabels",
    "Step",
    "case_by_name",
]

MAIN_CONTEXT = "NetworkPolicy between server and client"
UDP_CONTEXT = "NetworkPolicy between server and client using UDP"
SCTP_CONTEXT = "NetworkPolicy between server and client using SCTP"

PolicyFactory = Callable[[Addresses], dict[str, Any]]
"""Builds a NetworkPolicy dict from the pod addresses of the family under test."""


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyPolicy:
    """Create or replace a NetworkPolicy (exactly one of ``policy``/``policy_factory``)."""

    policy: Mapping[str, Any] | None = None
    policy_factory: PolicyFactory | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.policy is None) == (self.policy_factory is None):
            raise ValueError("ApplyPolicy needs exactly one of policy / policy_factory")

    @property
    def needs_addresses(self) -> bool:
        """True if rendering needs pod IPs (an ipBlock policy)."""
        return self.policy_factory is not None

    def render(self, addresses: Addresses | None = None) -> dict[str, Any]:
        """The concrete policy dict (a fresh deep copy, safe to mutate)."""
        if self.policy_factory is not None:
            if addresses is None:
                raise ValueError("this policy depends on pod IPs: pass addresses")
            return self.policy_factory(addresses)
        assert self.policy is not None
        return copy.deepcopy(dict(self.policy))


@dataclass(frozen=True)
class DeletePolicy:
    """Delete NetworkPolicy ``namespace``/``name``."""

    namespace: str
    name: str


@dataclass(frozen=True)
class SetNamespaceLabels:
    """Replace the complete label set of ``namespace`` with ``labels``."""

    namespace: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class SetPodLabels:
    """Replace the complete label set of pod ``namespace``/``pod`` with ``labels``."""

    namespace: str
    pod: str
    labels: Mapping[str, str]


Action = ApplyPolicy | DeletePolicy | SetNamespaceLabels | SetPodLabels


@dataclass(frozen=True)
class Probe:
    """One probe matrix (upstream ``ValidateOrFail`` / ``TestCase``): all pairs, one port."""

    port: int
    protocol: str  # "TCP" / "UDP"
    expected: Reachability


@dataclass(frozen=True)
class Step:
    """Actions applied in order, then the probes, in order."""

    actions: tuple[Action, ...]
    probes: tuple[Probe, ...]


@dataclass(frozen=True)
class Case:
    """One upstream ``It``: steps run in order on a pristine cluster.

    ``name`` is unique: the ``It`` text, prefixed by the ginkgo ``Context`` text for cases
    outside :data:`MAIN_CONTEXT` (see the module docstring).
    """

    name: str
    steps: tuple[Step, ...]
    ipv6_ok: bool = True
    context: str = MAIN_CONTEXT

    @property
    def it(self) -> str:
        """The bare upstream ``It`` text."""
        prefix = f"{self.context} "
        if self.context != MAIN_CONTEXT and self.name.startswith(prefix):
            return self.name[len(prefix) :]
        return self.name

    @property
    def needs_addresses(self) -> bool:
        """True if some policy of the case depends on pod IPs."""
        return any(
            isinstance(a, ApplyPolicy) and a.needs_addresses
            for step in self.steps
            for a in step.actions
        )

    @property
    def probes(self) -> tuple[Probe, ...]:
        return tuple(p for step in self.steps for p in step.probes)

    @property
    def protocols(self) -> frozenset[str]:
        return frozenset(p.protocol for p in self.probes)


# ---------------------------------------------------------------------------------------------
# Builders (the Python counterparts of upstream's policies.go helpers)
# ---------------------------------------------------------------------------------------------

X, Y, Z = "x", "y", "z"


def _labels(**labels: str) -> dict[str, Any]:
    """A LabelSelector with matchLabels; ``{}`` (select everything) when no labels are given."""
    return {"matchLabels": dict(labels)} if labels else {}


def _ns_is(namespace: str) -> dict[str, Any]:
    """Namespace selector on the automatic name label (``namespaceLabelKey: <ns>``)."""
    return {"matchLabels": {NAMESPACE_LABEL_KEY: namespace}}


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    """A LabelSelector with a single matchExpressions requirement."""
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


def _port(port: int | str | None = None, protocol: str | None = None) -> dict[str, Any]:
    """A NetworkPolicyPort; omitted fields stay omitted, as upstream sends them."""
    out: dict[str, Any] = {}
    if protocol is not None:
        out["protocol"] = protocol
    if port is not None:
        out["port"] = port
    return out


def _netpol(
    name: str,
    namespace: str,
    pod_selector: dict[str, Any],
    *,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
    policy_types: list[str] | None = None,
) -> dict[str, Any]:
    """A NetworkPolicy dict, like upstream ``GenNetworkPolicy`` + ``SetSpec{In,E}gressRules``.

    As upstream, passing ``ingress`` (even ``[]``) adds ``"Ingress"`` to ``policyTypes`` and
    passing ``egress`` adds ``"Egress"``, in that order, unless ``policy_types`` overrides.
    """
    spec: dict[str, Any] = {"podSelector": pod_selector}
    types: list[str] = []
    if ingress is not None:
        spec["ingress"] = ingress
        types.append("Ingress")
    if egress is not None:
        spec["egress"] = egress
        types.append("Egress")
    spec["policyTypes"] = policy_types if policy_types is not None else types
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _apply(policy: dict[str, Any]) -> ApplyPolicy:
    return ApplyPolicy(policy=policy)


def _reach() -> Reachability:
    """``NewReachability(k8s.AllPodStrings(), true)``."""
    return Reachability(ALL_PODS, True)


def _probe(port: int, protocol: str, expected: Reachability) -> Probe:
    return Probe(port=port, protocol=protocol, expected=expected.freeze())


def _tcp(port: int, expected: Reachability) -> Probe:
    return _probe(port, "TCP", expected)


def _udp(port: int, expected: Reachability) -> Probe:
    return _probe(port, "UDP", expected)


def _step(actions: list[Action], probes: list[Probe]) -> Step:
    return Step(actions=tuple(actions), probes=tuple(probes))


def _case(name: str, *steps: Step, context: str = MAIN_CONTEXT, ipv6_ok: bool = True) -> Case:
    full = name if context == MAIN_CONTEXT else f"{context} {name}"
    return Case(name=full, steps=tuple(steps), ipv6_ok=ipv6_ok, context=context)


ANY = Peer()
NS_X, NS_Y, NS_Z = Peer(X), Peer(Y), Peer(Z)
X_A = Peer(X, "a")


# ---------------------------------------------------------------------------------------------
# The cases, in upstream order
# ---------------------------------------------------------------------------------------------


def _main_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # -- default deny ---------------------------------------------------------------------
    add(
        _case(
            "should support a 'default-deny-ingress' policy",
            _step(
                [_apply(_netpol("deny-ingress", X, {}, ingress=[]))],
                [_tcp(80, _reach().expect_peer(ANY, NS_X, False))],
            ),
        )
    )
    add(
        _case(
            "should support a 'default-deny-all' policy",
            _step(
                [_apply(_netpol("deny-all", X, {}, ingress=[], egress=[]))],
                [_tcp(80, _reach().expect_peer(ANY, NS_X, False).expect_peer(NS_X, ANY, False))],
            ),
        )
    )

    # -- pod / namespace selectors --------------------------------------------------------
    add(
        _case(
            "should enforce policy to allow traffic from pods within server namespace based on "
            "PodSelector",
            _step(
                [
                    _apply(
                        _netpol(
                            "x-a-allows-x-b",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"podSelector": _labels(pod="b")}]}],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
            ),
        )
    )
    add(
        _case(
            "should enforce policy to allow ingress traffic for a target",
            _step(
                [
                    _apply(_netpol("deny-all", X, {}, ingress=[])),
                    _apply(
                        _netpol(
                            "allow-all-to-a",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"podSelector": {}, "namespaceSelector": {}}]}],
                        )
                    ),
                ],
                [
                    _tcp(
                        80,
                        _reach()
                        .expect_all_ingress("x/a", True)
                        .expect_all_ingress("x/b", False)
                        .expect_all_ingress("x/c", False),
                    )
                ],
            ),
        )
    )
    add(
        _case(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-from-another-ns",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"namespaceSelector": {}}]}],
                        )
                    )
                ],
                [_tcp(80, _reach())],
            ),
        )
    )
    add(
        _case(
            "should enforce policy to allow traffic only from a different namespace, based on "
            "NamespaceSelector",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-client-a-via-ns-selector",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"namespaceSelector": _ns_is(Y)}]}],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_peer(NS_X, X_A, False).expect_peer(NS_Z, X_A, False))],
            ),
        )
    )
    add(
        _case(
            "should enforce policy based on PodSelector with MatchExpressions",
            _step(
                [
                    _apply(
                        _netpol(
                            "x-a-allows-x-b",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"podSelector": _expr("pod", "In", "b")}]}],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
            ),
        )
    )
    add(
        _case(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-ns-y-match-selector",
                            X,
                            _labels(pod="a"),
                            ingress=[
                                {
                                    "from": [
                                        {"namespaceSelector": _expr(NAMESPACE_LABEL_KEY, "In", Y)}
                                    ]
                                }
                            ],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_peer(NS_X, X_A, False).expect_peer(NS_Z, X_A, False))],
            ),
        )
    )
    add(
        _case(
            "should enforce policy based on PodSelector or NamespaceSelector",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-ns-y-match-selector",
                            X,
                            _labels(pod="a"),
                            ingress=[
                                {
                                    "from": [
                                        {
                                            "namespaceSelector": _expr(
                                                NAMESPACE_LABEL_KEY, "NotIn", X
                                            )
                                        },
                                        {"podSelector": _labels(pod="b")},
                                    ]
                                }
                            ],
                        )
                    )
                ],
                [_tcp(80, _reach().expect("x/a", "x/a", False).expect("x/c", "x/a", False))],
            ),
        )
    )
    add(
        _case(
            "should enforce policy based on PodSelector and NamespaceSelector",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-ns-y-podselector-and-nsselector",
                            X,
                            _labels(pod="a"),
                            ingress=[
                                {
                                    "from": [
                                        {
                                            "namespaceSelector": _expr(
                                                NAMESPACE_LABEL_KEY, "NotIn", X
                                            ),
                                            "podSelector": _labels(pod="b"),
                                        }
                                    ]
                                }
                            ],
                        )
                    )
                ],
                [
                    _tcp(
                        80,
                        _reach()
                        .expect_all_ingress("x/a", False)
                        .expect("y/b", "x/a", True)
                        .expect("z/b", "x/a", True),
                    )
                ],
            ),
        )
    )
    add(
        _case(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-ns-y-z-pod-b-c",
                            X,
                            _labels(pod="a"),
                            ingress=[
                                {
                                    "from": [
                                        {
                                            "namespaceSelector": _expr(
                                                NAMESPACE_LABEL_KEY, "NotIn", X
                                            ),
                                            "podSelector": _expr("pod", "In", "b", "c"),
                                        }
                                    ]
                                }
                            ],
                        )
                    )
                ],
                [
                    _tcp(
                        80,
                        _reach()
                        .expect_peer(NS_X, X_A, False)
                        .expect("y/a", "x/a", False)
                        .expect("z/a", "x/a", False),
                    )
                ],
            ),
        )
    )
    add(
        _case(
            "should enforce policy based on any PodSelectors",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-ns-x-pod-b-c",
                            X,
                            _labels(pod="a"),
                            ingress=[
                                {
                                    "from": [
                                        {"podSelector": _labels(pod="b")},
                                        {"podSelector": _labels(pod="c")},
                                    ]
                                }
                            ],
                        )
                    )
                ],
                [
                    _tcp(
                        80,
                        _reach()
                        .expect_all_ingress("x/a", False)
                        .expect("x/b", "x/a", True)
                        .expect("x/c", "x/a", True),
                    )
                ],
            ),
        )
    )
    add(
        _case(
            "should enforce policy to allow traffic only from a pod in a different namespace "
            "based on PodSelector and NamespaceSelector",
            _step(
                [_apply(_allow_ns_y_pod_a_policy())],
                [_tcp(80, _reach().expect_all_ingress("x/a", False).expect("y/a", "x/a", True))],
            ),
        )
    )

    # -- ports ----------------------------------------------------------------------------
    port81_allow = (
        _reach()
        .expect_peer(NS_X, X_A, False)
        .expect_peer(NS_Y, X_A, True)
        .expect_peer(NS_Z, X_A, False)
    )
    add(
        _case(
            "should enforce policy based on Ports",
            _step(
                [_apply(_ns_y_to_a_on_port("allow-client-a-via-ns-selector", 81, "TCP"))],
                [_tcp(81, port81_allow.copy())],
            ),
        )
    )
    add(
        _case(
            "should enforce multiple, stacked policies with overlapping podSelectors",
            _step(
                [_apply(_ns_y_to_a_on_port("allow-client-a-via-ns-selector", 81, "TCP"))],
                [
                    _tcp(81, port81_allow.copy()),
                    _tcp(80, _reach().expect_all_ingress("x/a", False)),
                ],
            ),
            _step(
                [_apply(_ns_y_to_a_on_port("allow-client-a-via-ns-selector-80", 80, "TCP"))],
                [_tcp(80, port81_allow.copy())],
            ),
        )
    )
    add(
        _case(
            "should support allow-all policy",
            _step(
                [_apply(_netpol("allow-all", X, {}, ingress=[{}]))],
                [_tcp(80, _reach()), _tcp(81, _reach())],
            ),
        )
    )
    add(
        _case(
            "should allow ingress access on one named port",
            _step(
                [_apply(_netpol("allow-all", X, {}, ingress=[{"ports": [_port("serve-81-tcp")]}]))],
                [_tcp(81, _reach()), _tcp(80, _reach().expect_peer(ANY, NS_X, False))],
            ),
        )
    )
    add(
        _case(
            "should allow ingress access from namespace on one named port",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-client-a-via-ns-selector-80",
                            X,
                            _labels(pod="a"),
                            ingress=[
                                {
                                    "from": [{"namespaceSelector": _ns_is(Y)}],
                                    "ports": [_port("serve-80-tcp", "TCP")],
                                }
                            ],
                        )
                    )
                ],
                [
                    _tcp(80, _reach().expect_peer(NS_X, X_A, False).expect_peer(NS_Z, X_A, False)),
                    _tcp(81, _reach().expect_all_ingress("x/a", False)),
                ],
            ),
        )
    )
    add(
        _case(
            "should allow egress access on one named port",
            _step(
                [
                    _apply(
                        _netpol("allow-egress", X, {}, egress=[{"ports": [_port("serve-80-tcp")]}])
                    )
                ],
                [_tcp(80, _reach()), _tcp(81, _reach().expect_peer(NS_X, ANY, False))],
            ),
        )
    )

    # -- updates --------------------------------------------------------------------------
    add(
        _case(
            "should enforce updated policy",
            _step(
                [_apply(_netpol("allow-all-mutate-to-deny-all", X, {}, ingress=[{}]))],
                [_tcp(81, _reach())],
            ),
            _step(
                [_apply(_netpol("allow-all-mutate-to-deny-all", X, {}, ingress=[]))],
                [_tcp(81, _reach().expect_peer(ANY, NS_X, False))],
            ),
        )
    )
    add(
        _case(
            "should allow ingress access from updated namespace",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-client-a-via-ns-selector",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"namespaceSelector": _labels(ns2="updated")}]}],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_all_ingress("x/a", False))],
            ),
            _step(
                [SetNamespaceLabels(Y, {**namespace_labels(Y), "ns2": "updated"})],
                [
                    _tcp(
                        80,
                        _reach().expect_all_ingress("x/a", False).expect_peer(NS_Y, ANY, True),
                    )
                ],
            ),
        )
    )
    add(
        _case(
            "should allow ingress access from updated pod",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-client-a-via-pod-selector",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"podSelector": _labels(pod="b", pod2="updated")}]}],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_all_ingress("x/a", False))],
            ),
            _step(
                [SetPodLabels(X, "b", {"pod": "b", "pod2": "updated"})],
                [_tcp(80, _reach().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
            ),
        )
    )
    add(
        _case(
            "should deny ingress from pods on other namespaces",
            _step(
                [
                    _apply(
                        _netpol(
                            "deny-empty-policy", X, {}, ingress=[{"from": [{"podSelector": {}}]}]
                        )
                    )
                ],
                [_tcp(80, _reach().expect_peer(NS_Y, NS_X, False).expect_peer(NS_Z, NS_X, False))],
            ),
        )
    )
    add(
        _case(
            "should deny ingress access to updated pod",
            _step(
                [
                    _apply(
                        _netpol(
                            "deny-ingress-via-label-selector",
                            X,
                            _labels(target="isolated"),
                            ingress=[],
                        )
                    )
                ],
                [_tcp(80, _reach())],
            ),
            _step(
                [SetPodLabels(X, "a", {"pod": "a", "target": "isolated"})],
                [_tcp(80, _reach().expect_all_ingress("x/a", False))],
            ),
        )
    )

    # -- egress ---------------------------------------------------------------------------
    add(
        _case(
            "should deny egress from pods based on PodSelector",
            _step(
                [_apply(_netpol("deny-egress-pod-a", X, _labels(pod="a"), egress=[]))],
                [_tcp(80, _reach().expect_all_egress("x/a", False))],
            ),
        )
    )
    add(
        _case(
            "should deny egress from all pods in a namespace",
            _step(
                [_apply(_netpol("deny-egress-ns-x", X, {}, egress=[]))],
                [_tcp(80, _reach().expect_peer(NS_X, ANY, False))],
            ),
        )
    )
    add(
        _case(
            "should work with Ingress, Egress specified together",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-client-a-via-pod-selector",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"podSelector": _labels(pod="b")}]}],
                            egress=[{"ports": [_port(80)]}],
                            policy_types=["Egress", "Ingress"],
                        )
                    )
                ],
                [
                    _tcp(80, _reach().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
                    _tcp(
                        81,
                        _reach()
                        .expect_all_ingress("x/a", False)
                        .expect_all_egress("x/a", False)
                        .expect("x/b", "x/a", True),
                    ),
                ],
            ),
        )
    )
    from_x_a = {"from": [{"namespaceSelector": _ns_is(X), "podSelector": _labels(pod="a")}]}
    add(
        _case(
            "should support denying of egress traffic on the client side (even if the server "
            "explicitly allows this traffic)",
            _step(
                [
                    _apply(_egress_to_y_a_policy()),
                    _apply(
                        _netpol(
                            "allow-from-xa-on-ya-match-selector",
                            Y,
                            _labels(pod="a"),
                            ingress=[copy.deepcopy(from_x_a)],
                        )
                    ),
                    _apply(
                        _netpol(
                            "allow-from-xa-on-yb-match-selector",
                            Y,
                            _labels(pod="b"),
                            ingress=[copy.deepcopy(from_x_a)],
                        )
                    ),
                ],
                [
                    _tcp(
                        80,
                        _reach()
                        .expect_peer(X_A, ANY, False)
                        .expect_peer(ANY, Peer(Y, "a"), False)
                        .expect_peer(X_A, Peer(Y, "a"), True)
                        .expect_peer(ANY, Peer(Y, "b"), False),
                    )
                ],
            ),
        )
    )
    add(
        _case(
            "should enforce egress policy allowing traffic to a server in a different namespace "
            "based on PodSelector and NamespaceSelector",
            _step(
                [_apply(_egress_to_y_a_policy())],
                [_tcp(80, _reach().expect_all_egress("x/a", False).expect("x/a", "y/a", True))],
            ),
        )
    )
    add(
        _case(
            "should enforce ingress policy allowing any port traffic to a server on a specific "
            "protocol",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-ingress-by-proto",
                            X,
                            _labels(pod="a"),
                            ingress=[{"ports": [_port(protocol="TCP")]}],
                        )
                    )
                ],
                [_tcp(80, _reach()), _udp(80, _reach().expect_peer(ANY, X_A, False))],
            ),
        )
    )
    add(
        _case(
            "should enforce multiple ingress policies with ingress allow-all policy taking "
            "precedence",
            _step(
                [_apply(_netpol("allow-ingress-port-80", X, {}, ingress=[{"ports": [_port(80)]}]))],
                [_tcp(81, _reach().expect_peer(ANY, NS_X, False))],
            ),
            _step(
                [_apply(_netpol("allow-ingress", X, {}, ingress=[{}]))],
                [_tcp(81, _reach())],
            ),
        )
    )
    add(
        _case(
            "should enforce multiple egress policies with egress allow-all policy taking "
            "precedence",
            _step(
                [_apply(_netpol("allow-egress-port-80", X, {}, egress=[{"ports": [_port(80)]}]))],
                [_tcp(81, _reach().expect_peer(NS_X, ANY, False))],
            ),
            _step(
                [_apply(_netpol("allow-egress", X, {}, egress=[{}]))],
                [_tcp(81, _reach())],
            ),
        )
    )
    add(
        _case(
            "should stop enforcing policies after they are deleted",
            _step(
                [_apply(_netpol("deny-all", X, {}, ingress=[], egress=[]))],
                [_tcp(80, _reach().expect_peer(NS_X, ANY, False).expect_peer(ANY, NS_X, False))],
            ),
            _step([DeletePolicy(X, "deny-all")], [_tcp(80, _reach())]),
        )
    )

    # -- ipBlock (pod IPs resolved at run time) -------------------------------------------
    add(
        _case(
            "should allow egress access to server in CIDR block",
            _step(
                [ApplyPolicy(policy_factory=_cidr_to_y_b)],
                [_tcp(80, _reach().expect_all_egress("x/a", False).expect("x/a", "y/b", True))],
            ),
        )
    )
    add(
        _case(
            "should enforce except clause while egress access to server in CIDR block",
            _step(
                [ApplyPolicy(policy_factory=_large_cidr_except_x_b)],
                [_tcp(80, _reach().expect("x/a", "x/b", False))],
            ),
        )
    )
    add(
        _case(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            _step(
                [ApplyPolicy(policy_factory=_large_cidr_except_x_b)],
                [_tcp(80, _reach().expect("x/a", "x/b", False))],
            ),
            # Upstream UpdatePolicy: same name, the rule now allows exactly x/b.
            _step(
                [ApplyPolicy(policy_factory=_cidr_to_x_b)],
                [_tcp(80, _reach().expect_all_egress("x/a", False).expect("x/a", "x/b", True))],
            ),
        )
    )

    # -- independence of directions, protocols -------------------------------------------
    add(
        _case(
            "should enforce policies to check ingress and egress policies can be controlled "
            "independently based on PodSelector",
            _step(
                [_apply(_netpol("allow-egress-for-target", X, _labels(pod="a"), egress=[{}]))],
                [_tcp(80, _reach())],
            ),
            _step(
                [
                    _apply(
                        _netpol("deny-ingress-via-label-selector", X, _labels(pod="a"), ingress=[])
                    )
                ],
                [_tcp(80, _reach().expect_all_ingress("x/a", False))],
            ),
        )
    )
    add(
        _case(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin "
            "doesn't support SCTP",
            _step(
                [
                    _apply(_netpol("deny-ingress", X, {}, ingress=[])),
                    _apply(
                        _netpol(
                            "allow-only-sctp-ingress-on-port-81",
                            X,
                            _labels(pod="a"),
                            ingress=[{"ports": [_port(81, "SCTP")]}],
                        )
                    ),
                ],
                [_tcp(81, _reach().expect_peer(ANY, NS_X, False))],
            ),
        )
    )
    add(
        _case(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if "
            "the plugin doesn't support SCTP",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-only-sctp-ingress-on-port-80",
                            X,
                            _labels(pod="a"),
                            ingress=[{"ports": [_port(80, "SCTP")]}],
                        )
                    )
                ],
                [_tcp(81, _reach().expect_all_ingress("x/a", False))],
            ),
        )
    )
    add(
        _case(
            "should not allow access by TCP when a policy specifies only UDP",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-only-udp-ingress-on-port-81",
                            X,
                            _labels(pod="a"),
                            ingress=[{"ports": [_port(81, "UDP")]}],
                        )
                    )
                ],
                [_tcp(81, _reach().expect_all_ingress("x/a", False))],
            ),
        )
    )

    # -- the automatic kubernetes.io/metadata.name label ---------------------------------
    add(
        _case(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels "
            "using default ns label",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-client-a-via-ns-selector-for-immutable-ns-label",
                            X,
                            _labels(pod="a"),
                            ingress=[{"from": [{"namespaceSelector": _ns_is(Y)}]}],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_peer(NS_X, X_A, False).expect_peer(NS_Z, X_A, False))],
            ),
        )
    )
    add(
        _case(
            "should enforce policy based on NamespaceSelector with MatchExpressions using "
            "default ns label",
            _step(
                [
                    _apply(
                        _netpol(
                            "allow-ns-y-match-selector-for-immutable-ns-label",
                            X,
                            _labels(pod="a"),
                            egress=[
                                {
                                    "to": [
                                        {
                                            "namespaceSelector": _expr(
                                                NAMESPACE_LABEL_KEY, "NotIn", Y
                                            )
                                        }
                                    ]
                                }
                            ],
                        )
                    )
                ],
                [_tcp(80, _reach().expect_peer(X_A, NS_Y, False))],
            ),
        )
    )
    return cases


def _udp_cases() -> list[Case]:
    return [
        _case(
            "should support a 'default-deny-ingress' policy",
            _step(
                [_apply(_netpol("deny-all", X, {}, ingress=[]))],
                [_udp(80, _reach().expect_peer(ANY, NS_X, False))],
            ),
            context=UDP_CONTEXT,
        ),
        _case(
            "should enforce policy based on Ports",
            _step(
                [_apply(_ns_y_to_a_on_port("allow-ingress-on-port-81-ns-x", 81, "UDP"))],
                [_udp(81, _reach().expect_peer(NS_X, X_A, False).expect_peer(NS_Z, X_A, False))],
            ),
            context=UDP_CONTEXT,
        ),
        _case(
            "should enforce policy to allow traffic only from a pod in a different namespace "
            "based on PodSelector and NamespaceSelector",
            _step(
                [_apply(_allow_ns_y_pod_a_policy())],
                [_udp(80, _reach().expect_all_ingress("x/a", False).expect("y/a", "x/a", True))],
            ),
            context=UDP_CONTEXT,
        ),
    ]


# -- policies shared by several cases ---------------------------------------------------------


def _allow_ns_y_pod_a_policy() -> dict[str, Any]:
    return _netpol(
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        X,
        _labels(pod="a"),
        ingress=[{"from": [{"namespaceSelector": _ns_is(Y), "podSelector": _labels(pod="a")}]}],
    )


def _ns_y_to_a_on_port(name: str, port: int, protocol: str) -> dict[str, Any]:
    return _netpol(
        name,
        X,
        _labels(pod="a"),
        ingress=[{"from": [{"namespaceSelector": _ns_is(Y)}], "ports": [_port(port, protocol)]}],
    )


def _egress_to_y_a_policy() -> dict[str, Any]:
    return _netpol(
        "allow-to-ns-y-pod-a",
        X,
        _labels(pod="a"),
        egress=[{"to": [{"namespaceSelector": _ns_is(Y), "podSelector": _labels(pod="a")}]}],
    )


def _cidr_egress_policy(ip_block: dict[str, Any]) -> dict[str, Any]:
    return _netpol(
        "allow-client-a-via-cidr-egress-rule",
        X,
        _labels(pod="a"),
        egress=[{"to": [{"ipBlock": ip_block}]}],
    )


def _cidr_to_y_b(addresses: Addresses) -> dict[str, Any]:
    """x/a may egress only to y/b's host CIDR."""
    return _cidr_egress_policy({"cidr": addresses.host_cidr("y/b")})


def _cidr_to_x_b(addresses: Addresses) -> dict[str, Any]:
    """x/a may egress only to x/b's host CIDR."""
    return _cidr_egress_policy({"cidr": addresses.host_cidr("x/b")})


def _large_cidr_except_x_b(addresses: Addresses) -> dict[str, Any]:
    """x/a may egress to the /4 around x/b except x/b itself."""
    return _cidr_egress_policy(
        {"cidr": addresses.large_cidr("x/b"), "except": [addresses.host_cidr("x/b")]}
    )


# ---------------------------------------------------------------------------------------------
# Public tables
# ---------------------------------------------------------------------------------------------

CASES: list[Case] = _main_cases() + _udp_cases()
"""All ported cases, upstream order: main context, then the UDP context."""

SKIPPED_SCTP: tuple[str, ...] = tuple(
    f"{SCTP_CONTEXT} {it}"
    for it in (
        "should support a 'default-deny-ingress' policy",
        "should enforce policy based on Ports",
        "should enforce policy to allow traffic only from a pod in a different namespace based "
        "on PodSelector and NamespaceSelector",
    )
)
"""Upstream "Netpol [Feature:SCTPConnectivity] [LinuxOnly]" cases: they probe SCTP, which the
test kernel cannot do. (Same policies/tables as their UDP twins, with SCTP instead of UDP.)"""

SKIPPED: dict[str, str] = {}
"""Non-SCTP upstream cases that could not be expressed, name -> reason. Empty: every TCP/UDP
case of network_policy.go only needs pods, namespace/pod labels and policies, which the
actions above cover (Service/ClusterIP probing is replaced by direct pod-IP probing)."""


def case_by_name(name: str) -> Case:
    """The case called ``name``; ``KeyError`` if none."""
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(name)
