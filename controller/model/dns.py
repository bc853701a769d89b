"""The cluster's DNS as default deny's DNS allowance sees it: Services and endpoints.

Only what the allowance needs is read from a Service: its ClusterIPs and its port-53 entries
with their target ports. The endpoints are ``(protocol, address, port)``:

- each DNS pod's addresses on the port the Services' port-53 entries target (a number, or a
  container port name resolved on that pod as kube-proxy resolves it), or on port 53 when no
  Service says otherwise. kube-proxy rewrites a ClusterIP to a pod address in prerouting
  (output on the node), before the forward hook, so this is what the agent mostly sees;
- each Service ClusterIP on its port-53 entries, for paths where nothing rewrote it first;
- each configured address on port 53, UDP and TCP.

Unlike the DNS pods (already watched), Services come from one narrow watch (the DNS namespace,
the service selector), so this reads them leniently and never fails on fields it ignores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.model.config import DNS_PORT, ClusterDNS
from controller.model.errors import ParseError
from controller.model.ipaddr import IPAddress, parse_ip
from controller.model.meta import (
    INT32,
    INT_OR_STRING,
    LIST,
    STRING,
    STRINGS,
    Reader,
    describe,
    is_dns_label,
    name_of,
    namespace_of,
    object_meta,
    show,
)
from controller.model.pod import Pod, is_port_name
from controller.model.protocol import Protocol, parse_protocol
from controller.model.selector import LabelSelector, parse_selector

DNS_PROTOCOLS = (Protocol.UDP, Protocol.TCP)

Endpoint = tuple[Protocol, IPAddress, int]

SERVICE_SPEC = {"clusterIP": STRING, "clusterIPs": STRINGS, "ports": LIST}
SERVICE_PORT = {"port": INT32, "protocol": STRING, "targetPort": INT_OR_STRING, "name": STRING}


@dataclass(frozen=True)
class DnsService:
    """A DNS Service: its ClusterIPs and its port-53 entries as (protocol, target port)."""

    key: str  # namespace/name
    cluster_ips: tuple[IPAddress, ...]
    targets: tuple[tuple[Protocol, int | str], ...]


def parse_dns_service(raw: Mapping[str, Any]) -> DnsService:
    """A v1 Service from the API server. Headless (``None``) and ExternalName Services have
    no ClusterIP; entries other than UDP/TCP port 53 are not DNS and are left out."""
    reader = Reader(describe({"kind": "Service", **raw}))
    meta = object_meta(raw, reader)
    key = f"{namespace_of(meta, reader)}/{name_of(meta, reader)}"
    spec = reader.section(raw.get("spec"), "spec", {**SERVICE_SPEC, "type": STRING})
    ips: list[IPAddress] = []
    for text in spec.get("clusterIPs") or [spec.get("clusterIP") or "None"]:
        if text == "None":
            continue
        ip = parse_ip(text)
        if ip is None:
            raise reader.error("spec.clusterIPs", f"invalid IP address {show(text)}")
        ips.append(ip)
    targets: list[tuple[Protocol, int | str]] = []
    for i, entry in enumerate(reader.items(spec.get("ports"), "spec.ports")):
        where = f"spec.ports[{i}]"
        port = reader.section(entry, where, SERVICE_PORT)
        protocol = parse_protocol(port.get("protocol"), reader, f"{where}.protocol")
        if port.get("port") != DNS_PORT or protocol not in DNS_PROTOCOLS:
            continue
        target = port.get("targetPort")
        if target is None or target == 0:  # the API server defaults it to the port
            target = DNS_PORT
        valid = 1 <= target <= 65535 if isinstance(target, int) else is_port_name(target)
        if not valid:
            raise reader.error(f"{where}.targetPort", f"invalid target port {show(target)}")
        targets.append((protocol, target))
    return DnsService(key, tuple(ips), tuple(targets))


def dns_endpoints(
    dns: ClusterDNS, pods: Iterable[Pod], services: Iterable[DnsService]
) -> frozenset[Endpoint]:
    """Every (protocol, address, port) the DNS allowance opens: linear in pods x targets."""
    out: set[Endpoint] = set()
    targets: set[tuple[Protocol, int | str]] = set()
    for service in services:
        for protocol, target in service.targets:
            targets.add((protocol, target))
            out.update((protocol, ip, DNS_PORT) for ip in service.cluster_ips)
    if not targets:  # no Service (yet): the pods serve DNS on its own port
        targets = {(protocol, DNS_PORT) for protocol in DNS_PROTOCOLS}
    for pod in pods:
        for protocol, target in targets:
            number = target if isinstance(target, int) else pod.named_port(target, protocol)
            if number is not None:
                out.update((protocol, ip, number) for ip in pod.addresses)
    for ip in dns.addresses:
        out.update((protocol, ip, DNS_PORT) for protocol in DNS_PROTOCOLS)
    return frozenset(out)


def is_dns_pod(dns: ClusterDNS, pod: Pod) -> bool:
    return pod.namespace == dns.namespace and dns.pod_selector.matches(pod.labels)


def parse_equality_selector(text: str, option: str) -> LabelSelector:
    """``key=value[,key=value...]`` (what the chart renders from a map of labels), as a
    selector; the same text is the Service watch's server-side label selector. Anything else,
    and the empty selector (every pod of the namespace would count as DNS), is refused."""
    reader = Reader(option)
    labels: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or value.startswith("="):
            raise reader.error("", f"{show(part)} is not key=value (only equality is supported)")
        labels[key.strip()] = value.strip()
    if not labels:
        raise reader.error("", "must name at least one label (key=value)")
    return parse_selector({"matchLabels": labels}, reader, "")


def cluster_dns(
    namespace: str, pod_selector: str, service_selector: str, addresses: Iterable[str]
) -> ClusterDNS:
    """The DNS settings from command-line text, every part checked (``ParseError``)."""
    if not is_dns_label(namespace):
        raise ParseError("--dns-namespace", "", f"{show(namespace)} is not a namespace name")
    ips: set[IPAddress] = set()
    for text in addresses:
        ip = parse_ip(text)
        if ip is None:
            raise ParseError("--dns-address", "", f"{show(text)} is not an IP address")
        ips.add(ip)
    return ClusterDNS(
        namespace,
        parse_equality_selector(pod_selector, "--dns-pod-selector"),
        parse_equality_selector(service_selector, "--dns-service-selector"),
        frozenset(ips),
    )
