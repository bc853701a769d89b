"""The standard upstream NetworkPolicy e2e cluster, and its reachability truth table.

Cluster (mirrors upstream ``model.go`` / ``kubemanager.go``)
------------------------------------------------------------
* Namespaces ``x``, ``y``, ``z``. Upstream gives them *no* labels of its own any more: policies
  select namespaces through the automatic ``kubernetes.io/metadata.name`` label
  (``namespaceLabelKey`` upstream), so that is the only label here. (Old upstream revisions
  also set ``ns: <name>``; no current case uses it.) Upstream namespace names carry a random
  suffix; here they are exactly ``x``/``y``/``z`` and the policies use those names.
* Pods ``a``, ``b``, ``c`` in every namespace, labelled ``pod: <name>`` -- 9 pods, written
  ``"ns/pod"`` (upstream ``PodString``), e.g. ``"x/a"``.
* Every pod has one container per (port, protocol) -- ports 80 and 81, protocols TCP and UDP --
  named ``cont-<port>-<proto>`` with a single container port named ``serve-<port>-<proto>``
  (e.g. ``serve-81-tcp``), which is what the named-port cases refer to. Upstream also has SCTP
  containers; we cannot open SCTP sockets, so SCTP is left out of the model (see
  ``cases.SKIPPED_SCTP``). Modern upstream creates only the ports/protocols a case probes; we
  always create all of them, which changes no expectation (each probe targets one port/proto).

Reachability (mirrors upstream ``reachability.go`` + ``truthtable.go``)
-----------------------------------------------------------------------
A :class:`Reachability` is the expected table for one probe matrix, i.e. one
(port, protocol): ``True`` means "a connection from src to dst on that port is expected to
succeed". It starts all-``True`` (upstream ``NewReachability(pods, true)``) and is edited with
upstream's helpers, under their Python names:

==============================  ===========================================================
upstream                        here
==============================  ===========================================================
``Expect(from, to, v)``         :meth:`Reachability.expect`
``ExpectAllIngress(pod, v)``    :meth:`Reachability.expect_all_ingress` (column ``pod``)
``ExpectAllEgress(pod, v)``     :meth:`Reachability.expect_all_egress` (row ``pod``)
``ExpectPeer(&Peer{..}, ..)``   :meth:`Reachability.expect_peer` with :class:`Peer`
``AllowLoopback()``             :meth:`Reachability.allow_loopback`
``PrettyPrint``                 :meth:`Reachability.pretty`
``Summary`` / ``Compare``       :meth:`Reachability.compare`
``PrintSummary``                :meth:`Reachability.format_comparison`
==============================  ===========================================================

Self-traffic (src == dst)
-------------------------
Upstream probes *all* ordered pairs, including a pod to itself (through the pod's own Service
ClusterIP, i.e. hairpin). The expected value of such a cell is whatever the helpers above leave
in it -- e.g. ``ExpectAllIngress("x/a", False)`` also sets ``x/a -> x/a`` to ``False``; no
current case calls ``AllowLoopback``. But upstream compares with ``ignoreLoopback = true``
(network_policy.go, see kubernetes/kubernetes#95879: "The semantics of the effect of network
policies on loopback calls may be undefined ... CNIs do different things"), so a src == dst
cell never makes a case fail; it is only counted as "ignored". We mirror that exactly: the
tables keep upstream's values, and :meth:`Reachability.compare` ignores the diagonal by default
(``ignore_loopback=True``).

Here a src == dst probe means: the pod connects to its *own pod IP* (we have no Services).
On Linux that traffic never leaves the pod's network namespace (it goes over the pod's ``lo``),
so a host-side enforcer cannot see it and it normally succeeds whatever the table says -- one
more reason it is informational only.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

NAMESPACE_LABEL_KEY = "kubernetes.io/metadata.name"
"""Label the API server puts on every namespace (upstream ``namespaceLabelKey``)."""

POD_LABEL_KEY = "pod"
"""Label key carrying the pod's short name (upstream ``Pod.labelSelectorKey``)."""

NAMESPACES: tuple[str, ...] = ("x", "y", "z")
POD_NAMES: tuple[str, ...] = ("a", "b", "c")
PORTS: tuple[int, ...] = (80, 81)
PROTOCOLS: tuple[str, ...] = ("TCP", "UDP")
ALL_PODS: tuple[str, ...] = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES)
"""The 9 pods in upstream order (``Model.AllPodStrings``): x/a, x/b, x/c, y/a, ..., z/c."""

AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.56"
"""Server image upstream runs (informational; only used to make the pod dicts valid)."""

Family = Literal[4, 6]


def pod_string(namespace: str, pod: str) -> str:
    """``"ns/pod"`` (upstream ``NewPodString``)."""
    return f"{namespace}/{pod}"


def split_pod_string(pod: str) -> tuple[str, str]:
    """Inverse of :func:`pod_string`; raises ``ValueError`` on anything but ``"ns/pod"``."""
    namespace, sep, name = pod.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"expected ns/pod, got {pod!r}")
    return namespace, name


def namespace_labels(namespace: str) -> dict[str, str]:
    """Labels of a pristine model namespace."""
    return {NAMESPACE_LABEL_KEY: namespace}


def pod_labels(pod: str) -> dict[str, str]:
    """Labels of a pristine model pod (upstream ``Pod.LabelSelector``)."""
    return {POD_LABEL_KEY: pod}


def port_name(port: int, protocol: str) -> str:
    """Container port name, e.g. ``serve-80-tcp`` (upstream ``Container.PortName``)."""
    return f"serve-{port}-{protocol.lower()}"


def container_name(port: int, protocol: str) -> str:
    """Container name, e.g. ``cont-80-tcp`` (upstream ``Container.Name``)."""
    return f"cont-{port}-{protocol.lower()}"


def namespaces() -> list[dict[str, Any]]:
    """The three model namespaces as ``v1`` Namespace API dicts."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"netpol-upstream/ns/{ns}")),
                "labels": namespace_labels(ns),
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        for ns in NAMESPACES
    ]


def _container(port: int, protocol: str) -> dict[str, Any]:
    flag = {"TCP": "--tcp", "UDP": "--udp"}[protocol]
    return {
        "name": container_name(port, protocol),
        "image": AGNHOST_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/agnhost", "serve-hostname", flag, "--http=false", "--port", str(port)],
        "ports": [{"name": port_name(port, protocol), "containerPort": port, "protocol": protocol}],
    }


def pods(
    node_of: Callable[[str, str], str],
    ip_of: Callable[[str, str], tuple[str, str | None]],
) -> list[dict[str, Any]]:
    """The nine model pods as running ``v1`` Pod API dicts (``kubectl get -o yaml`` shape).

    ``node_of(namespace, pod)`` gives ``spec.nodeName``. ``ip_of(namespace, pod)`` gives
    ``(primary_ip, secondary_ip_or_None)``: ``status.podIP`` is the primary and
    ``status.podIPs`` lists the primary then, for dual-stack, the secondary (the other family).
    """
    result: list[dict[str, Any]] = []
    for ns in NAMESPACES:
        for name in POD_NAMES:
            primary, secondary = ip_of(ns, name)
            ips = [primary] if secondary is None else [primary, secondary]
            for ip in ips:
                ipaddress.ip_address(ip)  # fail early on garbage
            result.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "uid": str(
                            uuid.uuid5(uuid.NAMESPACE_URL, f"netpol-upstream/pod/{ns}/{name}")
                        ),
                        "labels": pod_labels(name),
                    },
                    "spec": {
                        "nodeName": node_of(ns, name),
                        "terminationGracePeriodSeconds": 0,
                        "containers": [
                            _container(port, proto) for port in PORTS for proto in PROTOCOLS
                        ],
                    },
                    "status": {
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "podIP": primary,
                        "podIPs": [{"ip": ip} for ip in ips],
                    },
                }
            )
    return result


@dataclass(frozen=True)
class Addresses:
    """Pod IPs of one address family, used to render IP-dependent (ipBlock) policies.

    ``ips`` maps ``"ns/pod"`` to that pod's IP in ``family``. Upstream builds its ipBlock
    CIDRs from the pod's (primary) IP at run time; here the runner builds an ``Addresses`` for
    the family it probes and hands it to :meth:`cases.ApplyPolicy.render`. Probes following
    such a policy must use the same family.
    """

    family: Family
    ips: Mapping[str, str]

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {self.family!r}")
        for pod, ip in self.ips.items():
            split_pod_string(pod)
            if ipaddress.ip_address(ip).version != self.family:
                raise ValueError(f"{pod}: {ip} is not an IPv{self.family} address")

    @classmethod
    def from_pods(cls, pod_dicts: Iterable[Mapping[str, Any]], family: Family) -> Addresses:
        """Pick each pod's ``family`` address out of ``status.podIPs`` (or ``podIP``)."""
        ips: dict[str, str] = {}
        for pod in pod_dicts:
            meta, status = pod["metadata"], pod.get("status", {})
            candidates = [entry["ip"] for entry in status.get("podIPs", [])]
            if not candidates and status.get("podIP"):
                candidates = [status["podIP"]]
            for ip in candidates:
                if ipaddress.ip_address(ip).version == family:
                    ips[pod_string(meta["namespace"], meta["name"])] = ip
                    break
        return cls(family=family, ips=ips)

    def ip(self, pod: str) -> str:
        """The IP of ``pod`` (``"ns/pod"``); ``KeyError`` if unknown."""
        try:
            return self.ips[pod]
        except KeyError:
            raise KeyError(f"no IPv{self.family} address for pod {pod}") from None

    def host_cidr(self, pod: str) -> str:
        """``<ip>/32`` or ``<ip>/128`` (upstream's ``hostMask`` CIDRs)."""
        return f"{self.ip(pod)}/{32 if self.family == 4 else 128}"

    def large_cidr(self, pod: str, prefix: int = 4) -> str:
        """The canonical ``/prefix`` network containing ``pod`` (upstream ``makeLargeCIDRForIP``).

        Upstream relies on every pod IP of the cluster falling inside this /4; runners must
        allocate pod addresses accordingly (e.g. all from 10.0.0.0/8 or fd00::/8).
        """
        return str(ipaddress.ip_network(f"{self.ip(pod)}/{prefix}", strict=False))


@dataclass(frozen=True)
class Peer:
    """Pod matcher for :meth:`Reachability.expect_peer` (upstream ``Peer``).

    An empty ``namespace`` matches every namespace and an empty ``pod`` every pod name, so
    ``Peer()`` is "any pod", ``Peer("x")`` "any pod in x" and ``Peer("x", "a")`` just x/a.
    """

    namespace: str = ""
    pod: str = ""

    def matches(self, pod: str) -> bool:
        ns, name = split_pod_string(pod)
        return (self.namespace in ("", ns)) and (self.pod in ("", name))


@dataclass(frozen=True)
class Mismatch:
    """One cell where observation differs from expectation (``observed`` None: not probed)."""

    src: str
    dst: str
    expected: bool
    observed: bool | None

    @property
    def loopback(self) -> bool:
        return self.src == self.dst

    def __str__(self) -> str:
        def word(value: bool | None) -> str:
            return "missing" if value is None else ("allowed" if value else "blocked")

        return (
            f"{self.src} -> {self.dst}: expected {word(self.expected)}, observed "
            + word(self.observed).upper()
        )


Observations = Mapping[tuple[str, str], bool]
"""Observed connectivity: ``{(src, dst): connected}`` over ``"ns/pod"`` strings."""


class Reachability:
    """Expected connectivity between every ordered pair of model pods for one (port, proto).

    Cells are keyed ``(src, dst)`` with ``"ns/pod"`` strings; see the module docstring for the
    helper operations and for how ``src == dst`` cells are treated. Mutators return ``self``
    so expectations can be chained. :meth:`freeze` makes the table read-only (the tables in
    ``cases.CASES`` are frozen; :meth:`copy` gives a mutable one).
    """

    __slots__ = ("_frozen", "_index", "_pods", "_values")

    def __init__(self, pods: Iterable[str] = ALL_PODS, default: bool = True) -> None:
        self._pods: tuple[str, ...] = tuple(pods)
        for pod in self._pods:
            split_pod_string(pod)
        if len(set(self._pods)) != len(self._pods):
            raise ValueError("duplicate pods in reachability table")
        self._index = frozenset(self._pods)
        self._values: dict[tuple[str, str], bool] = {
            (src, dst): default for src in self._pods for dst in self._pods
        }
        self._frozen = False

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_observations(
        cls, observed: Observations, pods: Iterable[str] = ALL_PODS
    ) -> Reachability:
        """A table holding ``observed`` (must cover every pair of ``pods``)."""
        table = cls(pods)
        missing = [pair for pair in table._values if pair not in observed]
        if missing:
            raise ValueError(f"observations incomplete, missing {len(missing)}: {missing[:5]}")
        for pair in table._values:
            table._values[pair] = bool(observed[pair])
        return table

    def copy(self) -> Reachability:
        """A mutable copy."""
        other = Reachability(self._pods)
        other._values = dict(self._values)
        return other

    def freeze(self) -> Self:
        """Make this table read-only and return it."""
        self._frozen = True
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    # -- upstream helpers ---------------------------------------------------------------

    def _check(self, pod: str) -> None:
        if pod not in self._index:
            raise KeyError(f"pod {pod!r} not in reachability table")

    def _set(self, src: str, dst: str, connected: bool) -> None:
        if self._frozen:
            raise TypeError("reachability table is frozen; use copy()")
        self._values[(src, dst)] = connected

    def expect(self, src: str, dst: str, connected: bool) -> Self:
        """Set one cell (upstream ``Expect``)."""
        self._check(src)
        self._check(dst)
        self._set(src, dst, connected)
        return self

    def expect_all_ingress(self, pod: str, connected: bool) -> Self:
        """Set every cell *into* ``pod``, including from itself (upstream ``ExpectAllIngress``)."""
        self._check(pod)
        for src in self._pods:
            self._set(src, pod, connected)
        return self

    def expect_all_egress(self, pod: str, connected: bool) -> Self:
        """Set every cell *from* ``pod``, including to itself (upstream ``ExpectAllEgress``)."""
        self._check(pod)
        for dst in self._pods:
            self._set(pod, dst, connected)
        return self

    def expect_peer(self, src: Peer, dst: Peer, connected: bool) -> Self:
        """Set every cell whose src matches ``src`` and dst matches ``dst`` (``ExpectPeer``)."""
        for s in self._pods:
            if src.matches(s):
                for d in self._pods:
                    if dst.matches(d):
                        self._set(s, d, connected)
        return self

    def allow_loopback(self) -> Self:
        """Expect every pod to reach itself (upstream ``AllowLoopback``)."""
        for pod in self._pods:
            self._set(pod, pod, True)
        return self

    # -- reading ------------------------------------------------------------------------

    @property
    def pods(self) -> tuple[str, ...]:
        return self._pods

    def get(self, src: str, dst: str) -> bool:
        self._check(src)
        self._check(dst)
        return self._values[(src, dst)]

    def __getitem__(self, pair: tuple[str, str]) -> bool:
        return self.get(*pair)

    def cells(self) -> Iterator[tuple[str, str, bool]]:
        """``(src, dst, expected)`` for every ordered pair, row by row in model order."""
        for src in self._pods:
            for dst in self._pods:
                yield src, dst, self._values[(src, dst)]

    def as_dict(self) -> dict[tuple[str, str], bool]:
        return dict(self._values)

    def count(self, value: bool, *, include_loopback: bool = True) -> int:
        """Number of cells equal to ``value``."""
        return sum(
            1
            for (src, dst), v in self._values.items()
            if v == value and (include_loopback or src != dst)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reachability):
            return NotImplemented
        return self._pods == other._pods and self._values == other._values

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        blocked = self.count(False)
        return f"<Reachability {len(self._pods)}x{len(self._pods)}, {blocked} blocked>"

    # -- comparison and printing --------------------------------------------------------

    def compare(
        self, observed: Observations | Reachability, *, ignore_loopback: bool = True
    ) -> list[Mismatch]:
        """Cells where ``observed`` differs from this (expected) table.

        Like upstream ``Summary(ignoreLoopback)``, ``src == dst`` cells are skipped unless
        ``ignore_loopback`` is False. A pair absent from ``observed`` is a mismatch with
        ``observed=None`` (upstream fails with "observations not complete").
        """
        seen = observed.as_dict() if isinstance(observed, Reachability) else observed
        mismatches = []
        for src, dst, expected in self.cells():
            if ignore_loopback and src == dst:
                continue
            got = seen.get((src, dst))
            if got is None or bool(got) != expected:
                mismatches.append(Mismatch(src, dst, expected, None if got is None else bool(got)))
        return mismatches

    def pretty(self, indent: str = "") -> str:
        """Upstream ``PrettyPrint``: ``.`` connected, ``X`` blocked, rows src, columns dst."""
        return _matrix(self._pods, lambda s, d: "." if self._values[(s, d)] else "X", indent)

    def format_comparison(
        self,
        observed: Observations | Reachability,
        *,
        ignore_loopback: bool = True,
        title: str = "",
    ) -> str:
        """Assertion message: expected, observed and comparison matrices plus the mismatches.

        Like upstream ``PrintSummary``. In the observed matrix a wrong cell is shown as
        ``*.*`` / ``*X*`` (the marking upstream's own comments use), a missing one as ``?``,
        and an ignored wrong loopback cell as ``(.)`` / ``(X)``. The comparison matrix has
        ``.`` for agreement, ``X`` for a counted mismatch and ``~`` for an ignored one.
        """
        seen = observed.as_dict() if isinstance(observed, Reachability) else observed
        counted = {(m.src, m.dst) for m in self.compare(seen, ignore_loopback=ignore_loopback)}
        all_wrong = {(m.src, m.dst) for m in self.compare(seen, ignore_loopback=False)}

        def obs_cell(src: str, dst: str) -> str:
            got = seen.get((src, dst))
            if got is None:
                return "?"
            mark = "." if got else "X"
            if (src, dst) in counted:
                return f"*{mark}*"
            if (src, dst) in all_wrong:
                return f"({mark})"
            return mark

        def cmp_cell(src: str, dst: str) -> str:
            if (src, dst) in counted:
                return "X"
            return "~" if (src, dst) in all_wrong else "."

        pairs = len(self._values)
        ignored = len(self._pods) if ignore_loopback else 0
        wrong = len(counted)
        summary = (
            f"reachability: correct:{pairs - ignored - wrong}, incorrect:{wrong}, "
            f"ignored loopback:{ignored}, result={wrong == 0}"
        )
        lines = [
            f"{title}: {summary}" if title else summary,
            "",
            "expected:",
            self.pretty("  "),
            "",
            "observed (*cell* = wrong, (cell) = wrong but ignored loopback, ? = missing):",
            _matrix(self._pods, obs_cell, "  "),
            "",
            "comparison (. = agree, X = mismatch, ~ = ignored loopback mismatch):",
            _matrix(self._pods, cmp_cell, "  "),
        ]
        mismatches = self.compare(seen, ignore_loopback=ignore_loopback)
        if mismatches:
            lines += ["", "mismatches:", *(f"  {m}" for m in mismatches)]
        return "\n".join(lines)


def _matrix(pods: tuple[str, ...], cell: Callable[[str, str], str], indent: str) -> str:
    width = max([5, *(len(p) + 2 for p in pods)])
    header = indent + "-".ljust(width) + "".join(p.ljust(width) for p in pods)
    rows = [
        indent + src.ljust(width) + "".join(cell(src, dst).ljust(width) for dst in pods)
        for src in pods
    ]
    return "\n".join(line.rstrip() for line in [header, *rows])
