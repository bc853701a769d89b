"""Disjoint interval arithmetic for nftables interval sets.

The kernel rejects overlapping elements in interval sets, and the fastest per-packet check is
one lookup in one set, so everything a pod allows is merged here into disjoint elements:
address intervals (all traffic) and ``address . protocol . port`` boxes. The compiler uses the
same intervals for membership tests (``IntervalSet``). Everything here costs O(n log n) in its
input, except merging boxes, whose output can be quadratic (a cross of wide and narrow boxes):
``merge_boxes`` therefore takes a work budget and gives up beyond it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence

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


def subtract(whole: Interval, holes: Iterable[Interval]) -> list[Interval]:
    """``whole`` minus every hole, as sorted disjoint intervals: one sweep over the merged
    holes (an ipBlock ``cidr`` minus its ``except`` entries)."""
    first, last = whole
    out: list[Interval] = []
    start = first  # the lowest address not yet covered by a hole or emitted
    for lo, hi in merge_intervals(holes):
        lo, hi = max(lo, first), min(hi, last)
        if lo > hi:
            continue
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= last:
        out.append((start, last))
    return out


class IntervalSet:
    """Sorted disjoint intervals with O(log n) membership tests."""

    def __init__(self, intervals: Sequence[Interval]) -> None:
        self.intervals = intervals
        self._starts = [lo for lo, _ in intervals]

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self.intervals[i][1]


def merge_boxes(boxes: Iterable[Box], max_work: float = float("inf")) -> list[Box] | None:
    """Turn overlapping (protocol, address range, port range) boxes into disjoint ones.

    Per protocol, sweep one axis: between two consecutive boundaries the set of covering boxes
    is constant, so their intervals on the other axis are merged once; neighbouring segments
    with identical merged intervals are joined again. Both axes are tried and the result with
    fewer elements wins. It covers exactly the union of the input.

    The work (intervals merged over all segments of both sweeps) is at most quadratic in the
    number of boxes, and so is the output; beyond ``max_work`` this returns None.
    """
    by_proto: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for proto, alo, ahi, plo, phi in boxes:
        by_proto[proto].append((alo, ahi, plo, phi))
    out: list[Box] = []
    budget = max_work
    for proto in sorted(by_proto):
        group = by_proto[proto]
        address_major = _sweep(group, budget)
        if address_major is None:
            return None
        address_segments, budget = address_major
        # The same sweep along the port axis: one wide range plus a few pods with extra
        # ports stays a handful of elements instead of the range split around every pod.
        port_major = _sweep([(p, q, a, b) for a, b, p, q in group], budget)
        if port_major is None:
            return None
        port_segments, budget = port_major
        swapped = [(a, b, p, q) for p, q, a, b in port_segments]
        best = min(address_segments, swapped, key=len)
        out.extend((proto, *seg) for seg in sorted(best))
    return out


def _sweep(
    boxes: list[tuple[int, int, int, int]], budget: float
) -> tuple[list[tuple[int, int, int, int]], float] | None:
    """Disjoint segments along the first axis, and what is left of ``budget`` (or None)."""
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
        budget -= len(active)
        if budget < 0:
            return None
        merged = tuple(merge_intervals(active))
        seg_end = points[i + 1] - 1
        if segments and segments[-1][1] + 1 == point and segments[-1][2] == merged:
            segments[-1] = (segments[-1][0], seg_end, merged)
        else:
            segments.append((point, seg_end, merged))
    return [(lo, hi, plo, phi) for lo, hi, ports in segments for plo, phi in ports], budget
