"""Disjoint interval arithmetic for nftables interval sets.

The kernel rejects overlapping elements in interval sets, and the fastest per-packet check is
one lookup in one set, so everything a pod allows is merged here into disjoint elements:
address intervals (all traffic) and ``address . protocol . port`` boxes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

Interval = tuple[int, int]  # inclusive
# (protocol number, address interval, port interval)
Box = tuple[int, int, int, int, int]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, with touching intervals joined."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def merge_boxes(boxes: Iterable[Box]) -> list[Box]:
    """Turn overlapping (protocol, address range, port range) boxes into disjoint ones.

    Per protocol, sweep one axis: between two consecutive boundaries the set of covering boxes
    is constant, so their intervals on the other axis are merged once; neighbouring segments
    with identical merged intervals are joined again. Both axes are tried and the result with
    fewer elements wins. It covers exactly the union of the input.
    """
    by_proto: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for proto, alo, ahi, plo, phi in boxes:
        by_proto[proto].append((alo, ahi, plo, phi))
    out: list[Box] = []
    for proto in sorted(by_proto):
        group = by_proto[proto]
        address_major = _sweep(group)
        # The same sweep along the port axis: one wide range plus a few pods with extra
        # ports stays a handful of elements instead of the range split around every pod.
        port_major = [(a, b, p, q) for p, q, a, b in _sweep([(p, q, a, b) for a, b, p, q in group])]
        best = min(address_major, port_major, key=len)
        out.extend((proto, *seg) for seg in sorted(best))
    return out


def _sweep(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    starts: dict[int, list[Interval]] = defaultdict(list)
    ends: dict[int, list[Interval]] = defaultdict(list)
    for alo, ahi, plo, phi in boxes:
        starts[alo].append((plo, phi))
        ends[ahi + 1].append((plo, phi))
    points = sorted(set(starts) | set(ends))
    active: dict[Interval, int] = {}
    segments: list[tuple[int, int, tuple[Interval, ...]]] = []
    for i, point in enumerate(points):
        for ports in ends.get(point, ()):
            active[ports] -= 1
            if not active[ports]:
                del active[ports]
        for ports in starts.get(point, ()):
            active[ports] = active.get(ports, 0) + 1
        if not active or i + 1 == len(points):
            continue
        merged = tuple(merge_intervals(active))
        seg_end = points[i + 1] - 1
        if segments and segments[-1][1] + 1 == point and segments[-1][2] == merged:
            segments[-1] = (segments[-1][0], seg_end, merged)
        else:
            segments.append((point, seg_end, merged))
    return [(lo, hi, plo, phi) for lo, hi, ports in segments for plo, phi in ports]
