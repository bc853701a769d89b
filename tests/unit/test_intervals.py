"""Interval arithmetic: disjoint output covering exactly the input, on small exhaustive grids
(the scaling of the sweeps is measured by ``bench/compile.py --large``)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from controller.agent.intervals import IntervalSet, merge_boxes, merge_intervals, subtract
from controller.compiler.ir import block_intervals
from controller.model import IPBlock

interval = st.tuples(st.integers(0, 30), st.integers(0, 30)).map(lambda t: (min(t), max(t)))
box = st.tuples(st.sampled_from([6, 17]), interval, interval).map(
    lambda t: (t[0], t[1][0], t[1][1], t[2][0], t[2][1])
)


@given(st.lists(interval, max_size=8))
def test_merge_intervals_is_exact_and_disjoint(intervals: list[tuple[int, int]]) -> None:
    merged = merge_intervals(intervals)
    covered = {x for lo, hi in intervals for x in range(lo, hi + 1)}
    assert {x for lo, hi in merged for x in range(lo, hi + 1)} == covered
    for (_, hi), (lo, _) in zip(merged, merged[1:], strict=False):
        assert hi + 1 < lo  # disjoint and not even touching (touching ones are joined)


@given(st.lists(box, max_size=8))
def test_merge_boxes_is_exact_and_disjoint(boxes: list[tuple[int, int, int, int, int]]) -> None:
    merged = merge_boxes(boxes)

    def points(bs: list[tuple[int, int, int, int, int]]) -> set[tuple[int, int, int]]:
        return {
            (proto, a, p)
            for proto, alo, ahi, plo, phi in bs
            for a in range(alo, ahi + 1)
            for p in range(plo, phi + 1)
        }

    assert points(merged) == points(boxes)
    assert sum((ahi - alo + 1) * (phi - plo + 1) for _, alo, ahi, plo, phi in merged) == len(
        points(merged)
    ), "elements overlap"
    assert len(merged) <= max(1, len(boxes)) * 4  # never an explosion on small inputs


def test_wide_range_with_extra_ports_on_one_address_stays_small() -> None:
    boxes = [(6, 0, 1000, 80, 80), (6, 500, 500, 9000, 9199)]
    assert merge_boxes(boxes) == [(6, 0, 1000, 80, 80), (6, 500, 500, 9000, 9199)]


# ---- ipBlocks to intervals (n log n sweep) against a naive enumeration ------------------------

# Networks inside 10.0.0.0/26: small enough to enumerate every address.
BASE = int(ipaddress.IPv4Address("10.0.0.0"))
network = st.integers(26, 32).flatmap(
    lambda bits: st.integers(0, 2 ** (bits - 26) - 1).map(
        lambda i: ipaddress.IPv4Network((BASE + (i << (32 - bits)), bits))
    )
)


@st.composite
def ip_block(draw: st.DrawFn) -> IPBlock:
    cidr = draw(network)
    inner = [n for n in draw(st.lists(network, max_size=6)) if n.subnet_of(cidr) and n != cidr]
    return IPBlock(cidr, tuple(inner))


def naive_addresses(blocks: list[IPBlock]) -> set[int]:
    return {
        int(ip) for block in blocks for ip in block.cidr if not any(ip in e for e in block.excepts)
    }


@given(st.lists(ip_block(), max_size=4))
def test_block_intervals_equal_the_naive_definition(blocks: list[IPBlock]) -> None:
    intervals = block_intervals(blocks)
    assert intervals[6] == []
    merged = intervals[4]
    assert {x for lo, hi in merged for x in range(lo, hi + 1)} == naive_addresses(blocks)
    assert merged == merge_intervals(merged)  # sorted, disjoint, touching ones joined
    members = IntervalSet(merged)
    for x in range(BASE - 2, BASE + 66):
        assert (x in members) == any(block.contains(ipaddress.IPv4Address(x)) for block in blocks)


@given(interval, st.lists(interval, max_size=8))
def test_subtract_is_exact(whole: tuple[int, int], holes: list[tuple[int, int]]) -> None:
    got = subtract(whole, holes)
    want = set(range(whole[0], whole[1] + 1)) - {x for lo, hi in holes for x in range(lo, hi + 1)}
    assert {x for lo, hi in got for x in range(lo, hi + 1)} == want
    assert got == merge_intervals(got)


def test_merge_boxes_gives_up_past_its_budget() -> None:
    # a grid of wide and narrow boxes: whichever axis is swept, the disjoint form is quadratic
    wide = [(6, 0, 1000, 2 * i, 2 * i) for i in range(40)]
    narrow = [(6, 2 * i, 2 * i, 0, 1000) for i in range(40)]
    merged = merge_boxes(wide + narrow)
    assert merged is not None and len(merged) > 40 * 40
    assert merge_boxes(wide + narrow, max_work=1000) is None
    assert merge_boxes(wide, max_work=1000) is not None  # linear inputs stay within it
