"""Pods: identity, labels, placement, addresses and named container ports."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from controller.model.errors import ParseError
from controller.model.meta import describe, mapping, name_of, namespace_of, sequence
from controller.model.protocol import Protocol, parse_protocol
from controller.model.selector import parse_labels

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})
# IANA_SVC_NAME, as validated by the API server for named ports.
PORT_NAME_RE = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass(frozen=True, order=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: Protocol


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    node: str | None = None
    ips: tuple[IPAddress, ...] = ()
    host_network: bool = False
    phase: str = "Running"
    ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def addresses(self) -> tuple[IPAddress, ...]:
        """The IPs that identify this pod as a policy peer and enforcement target.

        Terminated pods keep their IP in status but no longer own it (it may be reused), so
        they hold no address; hostNetwork pods share the node's IP and are never enforced.
        """
        if self.phase in TERMINATED_PHASES or self.host_network:
            return ()
        return self.ips

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        """The container port number behind ``name`` for ``protocol`` (first match wins)."""
        for p in self.ports:
            if p.name == name and p.protocol is protocol:
                return p.port
        return None


def parse_pod(raw: Mapping[str, Any]) -> Pod:
    obj = describe(raw)
    name = name_of(raw, obj)
    namespace = namespace_of(raw, obj, default="default")
    meta = mapping(raw.get("metadata"), obj, "metadata")
    spec = mapping(raw.get("spec"), obj, "spec")
    status = mapping(raw.get("status"), obj, "status")
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        raise ParseError(obj, "spec.nodeName", "must be a string")
    ports: list[ContainerPort] = []
    for kind in ("initContainers", "containers"):
        for ci, container in enumerate(sequence(spec.get(kind), obj, f"spec.{kind}")):
            cfield = f"spec.{kind}[{ci}]"
            cmap = mapping(container, obj, cfield)
            for pi, port in enumerate(sequence(cmap.get("ports"), obj, f"{cfield}.ports")):
                ports.append(_parse_container_port(port, obj, f"{cfield}.ports[{pi}]"))
    return Pod(
        namespace=namespace,
        name=name,
        labels=parse_labels(meta.get("labels"), obj, "metadata.labels"),
        node=node or None,
        ips=_parse_pod_ips(status, obj),
        host_network=bool(spec.get("hostNetwork", False)),
        phase=str(status.get("phase") or "Pending"),
        ports=tuple(ports),
    )


def _parse_container_port(raw: Any, obj: str, field: str) -> ContainerPort:
    port = mapping(raw, obj, field)
    number = port.get("containerPort")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
        raise ParseError(obj, f"{field}.containerPort", f"must be 1-65535, got {number!r}")
    name = port.get("name")
    if name is not None and (not isinstance(name, str) or not PORT_NAME_RE.match(name)):
        raise ParseError(obj, f"{field}.name", f"invalid port name {name!r}")
    return ContainerPort(
        name, number, parse_protocol(port.get("protocol"), obj, f"{field}.protocol")
    )


def _parse_pod_ips(status: Mapping[str, Any], obj: str) -> tuple[IPAddress, ...]:
    """podIPs (dual-stack) or podIP; at most one address per family, in status order."""
    raw_ips: list[tuple[str, Any]] = []
    for i, entry in enumerate(sequence(status.get("podIPs"), obj, "status.podIPs")):
        raw_ips.append(
            (f"status.podIPs[{i}].ip", mapping(entry, obj, f"status.podIPs[{i}]").get("ip"))
        )
    if not raw_ips and status.get("podIP"):
        raw_ips.append(("status.podIP", status.get("podIP")))
    ips: list[IPAddress] = []
    for where, value in raw_ips:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise ParseError(obj, where, f"invalid IP address {value!r}") from None
        if any(other.version == ip.version for other in ips):
            raise ParseError(obj, where, f"second IPv{ip.version} address {ip}")
        ips.append(ip)
    return tuple(ips)
