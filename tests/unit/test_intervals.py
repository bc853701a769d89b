"""Interval merging: disjoint output covering exactly the input, on a small exhaustive grid."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.agent.intervals import merge_boxes, merge_intervals

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
