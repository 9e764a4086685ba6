"""The merge policy as pure data: tiers, deletions, and what it costs a growing index over time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.faiss_build import FLAT_UP_TO
from indexer.merge_policy import SEGMENTS_PER_TIER, plan_merges, segment_type, tier
from retrieval.store.catalog import SegmentRow
from retrieval.store.manifest import IndexEntry

FLAT = IndexEntry("flat")


def segments(*sizes: int | tuple[int, int]) -> list[SegmentRow]:
    """Segment rows numbered from 1: a size is (count, deleted) or a count with nothing deleted."""
    rows = [size if isinstance(size, tuple) else (size, 0) for size in sizes]
    return [SegmentRow(number, count, deleted, {}, FLAT) for number, (count, deleted) in enumerate(rows, 1)]


def test_tiers_are_decades_of_live_rows():
    assert [tier(n) for n in (0, 1, 9, 10, 99, 100, 999, 1000, 10**6 - 1, 10**6, 10**7)] == [0, 0, 0, 1, 1, 2, 2, 3, 5, 6, 7]


def test_a_tier_merges_only_when_it_holds_more_than_its_share():
    assert plan_merges(segments(*[7] * SEGMENTS_PER_TIER, *[70] * SEGMENTS_PER_TIER, 10**6)) == []
    merges = plan_merges(segments(10**6, *[70] * SEGMENTS_PER_TIER, 5, *[7] * SEGMENTS_PER_TIER))
    assert [m.segments for m in merges] == [(12, *range(13, 23))]
    assert merges[0].reason == "tier 0 holds 11 segments"


def test_tiers_go_by_live_rows_and_each_overflowing_tier_is_one_merge():
    """A 1000-row segment with 991 rows deleted counts as tier 0 (and is rewritten in that merge)."""
    rows = segments((1000, 991), *[3] * 10, *[40] * 11)
    assert [m.segments for m in plan_merges(rows)] == [tuple(range(1, 12)), tuple(range(12, 23))]


@pytest.mark.parametrize("deleted, rewritten", [(200, False), (201, True), (1000, True)])
def test_a_segment_over_a_fifth_deleted_is_rewritten_alone(deleted, rewritten):
    merges = plan_merges(segments(5000, (1000, deleted), 30))
    assert [m.segments for m in merges] == ([(2,)] if rewritten else [])
    if rewritten:
        assert merges[0].reason == f"{deleted:,} of its 1,000 rows deleted"


def test_merges_are_disjoint_and_smallest_tier_first():
    rows = segments(*[2] * 11, (500, 400), *[20] * 12, (30_000, 9_000))
    planned = [m.segments for m in plan_merges(rows)]
    assert planned == [tuple(range(1, 12)), tuple(range(13, 25)), (12,), (25,)]
    flat = [s for merge in planned for s in merge]
    assert len(flat) == len(set(flat))


def test_small_merges_are_exact_large_ones_follow_the_layout():
    assert segment_type(FLAT_UP_TO, "hnsw") == "auto"
    assert segment_type(FLAT_UP_TO + 1, "hnsw") == "hnsw"
    assert segment_type(10**6, "auto") == "auto"


def simulate(batches: list[int], deletions: float = 0.0, seed: int = 0) -> dict:
    """An index grown by builds of `batches` images each (every build one new segment, a share of
    `deletions` of its images deleted later at random), the policy run after each build until it asks
    for nothing. Counts rows copied by merges and the most segments ever live."""
    rng = np.random.default_rng(seed)
    live: dict[int, SegmentRow] = {}
    next_id, copied, most, merges = 1, 0, 0, 0
    for batch in batches:
        live[next_id] = SegmentRow(next_id, batch, 0, {}, FLAT)
        next_id += 1
        if deletions and live:
            victim = live[int(rng.choice(list(live)))]
            gone = min(victim.live, int(rng.binomial(batch, deletions)))
            live[victim.id] = SegmentRow(victim.id, victim.count, victim.deleted + gone, {}, FLAT)
        while planned := plan_merges(live.values()):
            for merge in planned:
                rows = sum(live.pop(number).live for number in merge.segments)
                copied += rows
                merges += 1
                if rows:
                    live[next_id] = SegmentRow(next_id, rows, 0, {}, FLAT)
                    next_id += 1
        most = max(most, len(live))
    total = sum(batches)
    return {"total": total, "copied": copied, "per_row": copied / total, "most_segments": most, "merges": merges,
            "live": sum(s.live for s in live.values())}


def test_one_image_a_build_costs_at_most_one_copy_a_tier():
    """20,000 builds of one image: each image is copied at most log10(N) ≈ 4.3 times in all, never the
    whole index every build, and no tier ever holds more than its share after the policy ran."""
    grown = simulate([1] * 20_000)
    assert grown["live"] == 20_000
    assert grown["per_row"] <= math.log10(20_000)
    assert grown["merges"] < 20_000 / SEGMENTS_PER_TIER * 1.2  # a merge per ten builds, not one per build
    assert grown["most_segments"] <= SEGMENTS_PER_TIER * (tier(20_000) + 1)


def test_builds_of_any_size_stay_within_the_bound():
    batches = list(np.random.default_rng(3).choice([1, 3, 40, 700, 5_000], size=3_000, p=[0.5, 0.2, 0.2, 0.08, 0.02]))
    grown = simulate([int(b) for b in batches])
    assert grown["per_row"] <= math.log10(grown["total"])
    assert grown["most_segments"] <= SEGMENTS_PER_TIER * (tier(grown["total"]) + 1)


def test_deletions_are_reclaimed_at_a_bounded_cost():
    """A tenth of what is added deleted again, at random: rewriting the segments that lose over a
    fifth costs at most four copies per deleted row beyond what the same builds cost without deletions."""
    grown = simulate([10] * 5_000, deletions=0.1, seed=1)
    clean = simulate([10] * 5_000)
    deleted = grown["total"] - grown["live"]
    assert deleted > 0.05 * grown["total"]
    assert grown["copied"] - clean["copied"] <= 4 * deleted
    assert grown["per_row"] <= math.log10(grown["total"])
