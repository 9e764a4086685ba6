"""Which segments to merge: a tiered policy in the manner of Lucene's TieredMergePolicy, as pure data.

Segments are bucketed by their live rows in tiers of factor 10 (tier t holds 10^t ≤ live < 10^(t+1);
an empty segment is tier 0). A tier holding more than SEGMENTS_PER_TIER segments is merged into one,
which lands one or two tiers up. A segment with more than MAX_DELETED_SHARE of its rows deleted is
rewritten without them: in its tier's merge when there is one, else alone.

What a row costs over its life (write amplification). A row is copied once each time its segment
takes part in a tier merge, and each merge lifts it at least one tier, so a row that arrived in a
build of k images is copied at most log10(N) − floor(log10 k) times in an index of N rows: at most
6 times at 1M, 7 at 10M, whatever the order of builds. A copy writes, at d=768, 1.5 KB of float16
vector and its FAISS row: 3 KB in flat, 3.3 KB in hnsw (float32 and links), 0.8 KB in ivf; merging
100k rows into hnsw wrote 5.0 KB a row in all (bench.store). Adding one image to a 1M hnsw index
thus costs ≤ 6 × 5 = 30 KB of merge writes amortised, one copy more per tenfold growth, where a
full rewrite costs the whole index (5 GB at 1M) every build. The biggest segment is merged again
only when its tier fills, i.e. after at least as many rows as it holds were added since. Deletions:
a segment is rewritten once more than 20% of its rows are gone, copying at most 80% for 20%: ≤ 4
row copies per deleted row.

The price of that bound is the number of segments a query visits: at most SEGMENTS_PER_TIER per
tier, 10 × (floor(log10 N) + 1) in all (80 at 10M); the small ones are scanned exactly (segment_type).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from indexer.faiss_build import FLAT_UP_TO
from retrieval.store.catalog import SegmentRow

SEGMENTS_PER_TIER = 10
MAX_DELETED_SHARE = 0.2


@dataclass(frozen=True)
class Merge:
    """Segments to fold into one new segment of their live rows, and why (for progress lines)."""

    segments: tuple[int, ...]
    reason: str


def tier(live: int) -> int:
    """floor(log10(max(live, 1))), counted in digits: exact where a float logarithm can round up
    just below a power of ten."""
    return len(str(max(live, 1))) - 1


def too_deleted(segment: SegmentRow) -> bool:
    return segment.deleted > MAX_DELETED_SHARE * segment.count


def plan_merges(segments: Iterable[SegmentRow]) -> list[Merge]:
    """The merges the policy asks for now, disjoint, smallest tier first. Running them may fill the
    next tier up, so a caller plans again after each round until nothing is left to do."""
    tiers: dict[int, list[SegmentRow]] = {}
    for segment in sorted(segments, key=lambda s: s.id):
        tiers.setdefault(tier(segment.live), []).append(segment)
    merges = []
    for number, members in sorted(tiers.items()):
        if len(members) > SEGMENTS_PER_TIER:
            merges.append(Merge(tuple(s.id for s in members), f"tier {number} holds {len(members)} segments"))
            continue
        merges += [
            Merge((s.id,), f"{s.deleted:,} of its {s.count:,} rows deleted") for s in members if too_deleted(s)
        ]
    return merges


def segment_type(rows: int, requested: str) -> str:
    """The index type of a merged segment of `rows` rows in an index whose layout asks for `requested`:
    `auto` up to FLAT_UP_TO rows (flat, the exact scan, unless the memory budget says otherwise),
    the layout's own type beyond; a build's small segments follow the same rule."""
    return "auto" if rows <= FLAT_UP_TO and requested != "flat" else requested
