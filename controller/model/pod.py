"""Pods: identity, labels, placement, addresses and named container ports.

Named ports resolve as Kubernetes resolves a Service's ``targetPort`` name
(``k8s.io/endpointslice`` ``FindPort``, which kube-proxy and the kubelet follow): the ports of
``containers`` in declared order, then those of restartable sidecar init containers
(``restartPolicy: Always``); ordinary init containers' ports do not count, and for one
name + protocol the first declared wins. ``Pod.ports`` holds exactly those, in that order.

Checked fully (field names in strict mode, JSON types always): the top level, ``metadata``,
``spec``, ``spec.containers[*]``/``spec.initContainers[*]`` and their ``ports[*]``, ``status``
and ``status.podIPs[*]`` — every section a field we read lives in. Below that (probes,
volumes, security contexts, resources, affinity, ...) a Pod is a large schema that changes with
every Kubernetes release and that nothing here reads: a mistake there cannot change what is
enforced, so only the JSON type of those fields is checked, not their contents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from controller.model.ipaddr import IPAddress, parse_ip
from controller.model.meta import (
    BOOLEAN,
    INT32,
    INT64,
    LIST,
    OBJECT,
    STRING,
    STRING_MAP,
    STRINGS,
    Reader,
    Schema,
    describe,
    is_dns_subdomain,
    name_of,
    namespace_of,
    object_meta,
    show,
)
from controller.model.protocol import Protocol, parse_protocol
from controller.model.selector import parse_labels

__all__ = ["ContainerPort", "IPAddress", "Pod", "is_port_name", "parse_pod"]

TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})
SIDECAR_RESTART_POLICY = "Always"

POD: Schema = {
    "apiVersion": STRING,
    "kind": STRING,
    "metadata": OBJECT,
    "spec": OBJECT,
    "status": OBJECT,
}
POD_SPEC: Schema = {
    "activeDeadlineSeconds": INT64,
    "affinity": OBJECT,
    "automountServiceAccountToken": BOOLEAN,
    "containers": LIST,
    "dnsConfig": OBJECT,
    "dnsPolicy": STRING,
    "enableServiceLinks": BOOLEAN,
    "ephemeralContainers": LIST,
    "hostAliases": LIST,
    "hostIPC": BOOLEAN,
    "hostNetwork": BOOLEAN,
    "hostPID": BOOLEAN,
    "hostUsers": BOOLEAN,
    "hostname": STRING,
    "hostnameOverride": STRING,
    "imagePullSecrets": LIST,
    "initContainers": LIST,
    "nodeName": STRING,
    "nodeSelector": STRING_MAP,
    "os": OBJECT,
    "overhead": OBJECT,
    "preemptionPolicy": STRING,
    "priority": INT32,
    "priorityClassName": STRING,
    "readinessGates": LIST,
    "resourceClaims": LIST,
    "resources": OBJECT,
    "restartPolicy": STRING,
    "runtimeClassName": STRING,
    "schedulerName": STRING,
    "schedulingGates": LIST,
    "securityContext": OBJECT,
    "serviceAccount": STRING,
    "serviceAccountName": STRING,
    "setHostnameAsFQDN": BOOLEAN,
    "shareProcessNamespace": BOOLEAN,
    "subdomain": STRING,
    "terminationGracePeriodSeconds": INT64,
    "tolerations": LIST,
    "topologySpreadConstraints": LIST,
    "volumes": LIST,
}
CONTAINER: Schema = {
    "args": STRINGS,
    "command": STRINGS,
    "env": LIST,
    "envFrom": LIST,
    "image": STRING,
    "imagePullPolicy": STRING,
    "lifecycle": OBJECT,
    "livenessProbe": OBJECT,
    "name": STRING,
    "ports": LIST,
    "readinessProbe": OBJECT,
    "resizePolicy": LIST,
    "resources": OBJECT,
    "restartPolicy": STRING,
    "restartPolicyRules": LIST,
    "securityContext": OBJECT,
    "startupProbe": OBJECT,
    "stdin": BOOLEAN,
    "stdinOnce": BOOLEAN,
    "terminationMessagePath": STRING,
    "terminationMessagePolicy": STRING,
    "tty": BOOLEAN,
    "volumeDevices": LIST,
    "volumeMounts": LIST,
    "workingDir": STRING,
}
CONTAINER_PORT: Schema = {
    "containerPort": INT32,
    "hostIP": STRING,
    "hostPort": INT32,
    "name": STRING,
    "protocol": STRING,
}
POD_STATUS: Schema = {
    "conditions": LIST,
    "containerStatuses": LIST,
    "ephemeralContainerStatuses": LIST,
    "extendedResourceClaimStatus": OBJECT,
    "hostIP": STRING,
    "hostIPs": LIST,
    "initContainerStatuses": LIST,
    "message": STRING,
    "nominatedNodeName": STRING,
    "observedGeneration": INT64,
    "phase": STRING,
    "podIP": STRING,
    "podIPs": LIST,
    "qosClass": STRING,
    "reason": STRING,
    "resize": STRING,
    "resourceClaimStatuses": LIST,
    "startTime": STRING,
}
POD_IP: Schema = {"ip": STRING}

# IANA_SVC_NAME as apimachinery's IsValidPortName checks it.
_PORT_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PORT_NAME_MAX = 15


def is_port_name(name: str) -> bool:
    """1-15 of ``[-a-z0-9]``, at least one letter, no leading, trailing or double hyphen."""
    return (
        len(name) <= _PORT_NAME_MAX
        and _PORT_NAME_RE.fullmatch(name) is not None
        and "--" not in name
        and any("a" <= c <= "z" for c in name)
    )


@dataclass(frozen=True)
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
    # The ports named ports resolve against, in resolution order (see the module docstring).
    ports: tuple[ContainerPort, ...] = ()
    # metadata.creationTimestamp (RFC 3339, so it sorts as text); "" when unknown. Decides which
    # of two live pods reporting one IP owns it (the newest).
    created: str = ""

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

    @cached_property
    def named_ports(self) -> tuple[tuple[str, Protocol, int], ...]:
        """(name, protocol, number) for each name + protocol, resolved: first declared wins."""
        resolved: dict[tuple[str, Protocol], int] = {}
        for p in self.ports:
            if p.name is not None:
                resolved.setdefault((p.name, p.protocol), p.port)
        return tuple((name, protocol, number) for (name, protocol), number in resolved.items())

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        """The container port number behind ``name`` for ``protocol`` (first match wins)."""
        for p in self.ports:
            if p.name == name and p.protocol is protocol:
                return p.port
        return None


def parse_pod(raw: Mapping[str, Any], *, strict: bool = False) -> Pod:
    reader = Reader(describe(raw), strict)
    top = reader.section(raw, "", POD)
    meta = object_meta(top, reader)
    name = name_of(meta, reader)
    namespace = namespace_of(meta, reader)
    spec = reader.section(top.get("spec"), "spec", POD_SPEC)
    status = reader.section(top.get("status"), "status", POD_STATUS)
    node: str | None = spec.get("nodeName") or None
    if node is not None and not is_dns_subdomain(node):
        raise reader.error("spec.nodeName", f"{show(node)} is not a DNS-1123 subdomain")
    return Pod(
        namespace=namespace,
        name=name,
        labels=parse_labels(meta.get("labels"), reader, "metadata.labels"),
        node=node,
        ips=_parse_pod_ips(status, reader),
        host_network=spec.get("hostNetwork") or False,
        phase=status.get("phase") or "Pending",
        ports=_parse_ports(spec, reader),
        created=meta.get("creationTimestamp") or "",
    )


def _parse_ports(spec: Mapping[str, Any], reader: Reader) -> tuple[ContainerPort, ...]:
    """Every container's ports are validated; those that count are returned in order."""
    counted: list[ContainerPort] = []
    sidecars: list[ContainerPort] = []
    for kind in ("containers", "initContainers"):
        for ci, raw in enumerate(reader.items(spec.get(kind), f"spec.{kind}")):
            where = f"spec.{kind}[{ci}]"
            container = reader.section(raw, where, CONTAINER)
            ports = _parse_container_ports(container, reader, where)
            if kind == "containers":
                counted += ports
            elif container.get("restartPolicy") == SIDECAR_RESTART_POLICY:
                sidecars += ports
    return tuple(counted + sidecars)


def _parse_container_ports(
    container: Mapping[str, Any], reader: Reader, where: str
) -> list[ContainerPort]:
    out: list[ContainerPort] = []
    names: set[str] = set()
    for pi, raw in enumerate(reader.items(container.get("ports"), f"{where}.ports")):
        field_ = f"{where}.ports[{pi}]"
        port = reader.section(raw, field_, CONTAINER_PORT)
        number = port.get("containerPort")
        if number is None or not 1 <= number <= 65535:
            raise reader.error(f"{field_}.containerPort", f"must be 1-65535, got {show(number)}")
        name = port.get("name") or None
        if name is not None:
            if not is_port_name(name):
                raise reader.error(f"{field_}.name", f"invalid port name {show(name)}")
            if name in names:  # the API server refuses this, whatever the protocols
                raise reader.error(f"{field_}.name", f"duplicate port name {show(name)}")
            names.add(name)
        protocol = parse_protocol(port.get("protocol"), reader, f"{field_}.protocol")
        out.append(ContainerPort(name, number, protocol))
    return out


def _parse_pod_ips(status: Mapping[str, Any], reader: Reader) -> tuple[IPAddress, ...]:
    """podIPs (dual-stack) or podIP; at most one address per family, in status order.

    As the API server converts v1 status: when ``podIP`` is set and differs from the first of
    ``podIPs``, ``podIP`` alone counts (older kubelets write only that one).
    """
    written: list[tuple[str, str | None]] = []
    for i, entry in enumerate(reader.items(status.get("podIPs"), "status.podIPs")):
        written.append(
            (
                f"status.podIPs[{i}].ip",
                reader.section(entry, f"status.podIPs[{i}]", POD_IP).get("ip"),
            )
        )
    single = status.get("podIP")
    if single and (not written or written[0][1] != single):
        written = [("status.podIP", single)]
    ips: list[IPAddress] = []
    for where, value in written:
        ip = parse_ip(value or "")
        if ip is None:
            raise reader.error(where, f"invalid IP address {show(value)}")
        if any(other.version == ip.version for other in ips):
            raise reader.error(where, f"second IPv{ip.version} address {ip}")
        ips.append(ip)
    return tuple(ips)
