"""IP addresses and CIDRs read the way kube-apiserver v1.34 reads its legacy fields.

NetworkPolicy ``ipBlock.cidr``/``except``, ``status.podIPs`` and ``spec.podCIDRs`` are "legacy"
fields: the API server validates them with ``k8s.io/utils/net`` ``ParseIPSloppy`` /
``ParseCIDRSloppy`` (Go's pre-1.17 parser) because the ``StrictIPCIDRValidation`` feature gate
is alpha and off by default in 1.34. It accepts, with a warning, spellings that Python's
``ipaddress`` refuses, and a policy we refused would leave its pods open. So this module accepts
exactly that grammar, with the meaning the API server itself gives it (the value its warnings
tell the user to write instead):

- IPv4 octets and prefix lengths may carry any number of leading zeros and are still decimal:
  ``010.0.0.0/8`` is 10.0.0.0/8 (not octal 8.0.0.0/8).
- IPv6 groups may carry leading zeros beyond four digits (``00000fd00::``).
- A CIDR may have bits set after the prefix length; they are ignored (``10.1.2.3/8`` is
  10.0.0.0/8).
- An IPv4-mapped IPv6 address is that IPv4 address, and a mapped CIDR with prefix ``96 + n``
  is the IPv4 CIDR with prefix ``n`` (``::ffff:10.0.0.0/104`` is 10.0.0.0/8), as Go's
  ``net.IPNet.Contains`` and ``IPFamilyOf`` treat them.

Not accepted, as there: zones (``fe80::1%eth0``), netmask prefixes (``/255.0.0.0``), white
space, non-ASCII digits, or anything else Go's parser rejects.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Go's parser takes any number of leading zeros; what follows must fit the field. The
# patterns keep the significant digits (ASCII only: [0-9], not \d).
_V4_RE = re.compile(r"0*([0-9]{1,3})\.0*([0-9]{1,3})\.0*([0-9]{1,3})\.0*([0-9]{1,3})")
_HEX_GROUP_RE = re.compile(r"0*([0-9a-fA-F]{1,4})")
_LENGTH_RE = re.compile(r"0*([0-9]{1,3})")
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96, the IPv4-mapped range, shifted right by 32 bits
_V4_BITS = 32
_V6_BITS = 128


def _ipv4(text: str) -> int | None:
    m = _V4_RE.fullmatch(text)
    if m is None:
        return None
    value = 0
    for digits in m.groups():
        octet = int(digits)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


def _ipv6(text: str) -> int | None:
    """Eight 16-bit groups, one ``::`` for at least one zero group, and optionally a dotted
    IPv4 address as the last 32 bits."""
    halves = text.split("::")
    if len(halves) > 2:
        return None
    groups: list[list[int]] = []
    for i, half in enumerate(halves):
        units: list[int] = []
        pieces = half.split(":") if half else []
        for j, piece in enumerate(pieces):
            last = i == len(halves) - 1 and j == len(pieces) - 1
            if "." in piece and last:
                v4 = _ipv4(piece)
                if v4 is None:
                    return None
                units += [v4 >> 16, v4 & 0xFFFF]
                continue
            m = _HEX_GROUP_RE.fullmatch(piece)
            if m is None:
                return None
            units.append(int(m.group(1), 16))
        groups.append(units)
    if len(groups) == 1:
        if len(groups[0]) != 8:
            return None
        units = groups[0]
    else:
        missing = 8 - len(groups[0]) - len(groups[1])
        if missing < 1:
            return None
        units = groups[0] + [0] * missing + groups[1]
    value = 0
    for unit in units:
        value = value << 16 | unit
    return value


def _unmap(value: int) -> IPAddress:
    if value >> 32 == _MAPPED_PREFIX:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return ipaddress.IPv6Address(value)


def parse_ip(text: str) -> IPAddress | None:
    """An address as ``ParseIPSloppy`` reads it (IPv4-mapped means IPv4); None if invalid."""
    v4 = _ipv4(text)
    if v4 is not None:
        return ipaddress.IPv4Address(v4)
    v6 = _ipv6(text)
    return _unmap(v6) if v6 is not None else None


def parse_cidr(text: str) -> tuple[IPNetwork, int] | None:
    """A CIDR as ``ParseCIDRSloppy`` reads it: the network it means and the prefix length as
    written (the API server compares written lengths: ``except`` must have a longer one than
    ``cidr``, even where one of them is IPv4-mapped). None if invalid."""
    address, slash, length_text = text.partition("/")
    if not slash:
        return None
    v4 = _ipv4(address)
    bits = _V4_BITS if v4 is not None else _V6_BITS
    value = v4 if v4 is not None else _ipv6(address)
    m = _LENGTH_RE.fullmatch(length_text)
    if value is None or m is None or int(m.group(1)) > bits:
        return None
    length = int(m.group(1))
    masked = value >> (bits - length) << (bits - length)
    if v4 is not None:
        return ipaddress.IPv4Network((masked, length)), length
    if length >= _V6_BITS - _V4_BITS and masked >> 32 == _MAPPED_PREFIX:
        return ipaddress.IPv4Network((masked & 0xFFFFFFFF, length - 96)), length
    return ipaddress.IPv6Network((masked, length)), length
