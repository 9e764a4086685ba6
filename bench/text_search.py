"""Text search over the lines read in images: the catalog's trigram index against a scan, at 1M lines.

A catalog is filled through the build's own write path (retrieval.store.text_lines.put_lines, three
lines an item) with lines of 2-30 characters: 6,000 Chinese characters at Zipf-like frequencies
(the commonest is 2.8% of all, as 的 is about 4% of written Chinese), a tenth of the lines digits
(phone numbers, prices). Queries are pieces of 1-8 characters of stored lines, answered by
match_text (the best 100 items; from 4 characters one edit forgiven) and, as the baseline
measured in the same run, by a scan of the folded column (`instr(norm, ?)`, exact only).

    python -m bench.text_search [--lines 1000000] [--queries 40]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench.report import cpu_model, table, timed
from retrieval.search.text_match import match_text
from retrieval.store.catalog import ITEM_COLUMNS, Catalog, put_items
from retrieval.store.text_lines import put_lines

VOCABULARY = Path(__file__).resolve().parent.parent / "retrieval" / "assets" / "char-vocab" / "vocab.txt"
BOX = [[0, 0], [100, 0], [100, 30], [0, 30]]
LENGTHS = (1, 2, 3, 4, 6, 8)


def line_maker(rng: random.Random):
    chars = [c for c in VOCABULARY.read_text(encoding="utf-8").split() if len(c) == 1 and "\u4e00" <= c <= "\u9fff"][:6000]
    rng.shuffle(chars)
    weights = list(itertools.accumulate(1 / (rank + 5) for rank in range(len(chars))))

    def line() -> str:
        length = max(2, min(30, int(rng.lognormvariate(2.2, 0.5))))
        if rng.random() < 0.1:
            return "".join(rng.choice("0123456789") for _ in range(length))
        return "".join(rng.choices(chars, cum_weights=weights, k=length))

    return line


def fill(catalog: Catalog, count: int, rng: random.Random) -> tuple[list[str], float]:
    """`count` lines, three an item, in transactions of 10,000 items; the lines and seconds taken."""
    line, lines = line_maker(rng), []
    item = {c: None for c in ITEM_COLUMNS} | {"size": 1, "mtime_ns": 0, "sha256": "", "width": 640, "height": 480, "segment": 1}
    start = time.perf_counter()
    items = (count + 2) // 3
    for first in range(0, items, 10_000):
        with catalog.transaction() as db:
            ids = range(first, min(items, first + 10_000))
            put_items(db, [tuple((item | {"id": i, "path": f"/p/{i}.jpg", "row": i})[c] for c in ITEM_COLUMNS) for i in ids])
            for i in ids:
                read = [line() for _ in range(min(3, count - 3 * i))]
                lines += read
                put_lines(db, i, [SimpleNamespace(text=text, box=BOX, confidence=0.9) for text in read])
    return lines, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=40, help="queries of each length")
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as temp:
        catalog = Catalog(Path(temp) / "catalog.sqlite", create=True)
        lines, seconds = fill(catalog, args.lines, rng)
        db = catalog.db
        sizes = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'ocr%' GROUP BY name").fetchall())
        rows = []
        for length in LENGTHS:
            pieces = [text[(start := rng.randrange(len(text) - length + 1)) : start + length]
                      for text in rng.sample([t for t in lines if len(t) >= length], args.queries)]
            indexed = [timed(lambda q=q: match_text(db, q, limit=100)) for q in pieces]
            scanned = [timed(lambda q=q: db.execute("SELECT item FROM ocr_lines WHERE instr(norm, ?) > 0", (q,)).fetchall())
                       for q in pieces[: max(3, args.queries // 8)]]  # the scan costs the same for any query
            ms = sorted(1000 * t for t, _ in indexed)
            scan = statistics.median(1000 * t for t, _ in scanned)
            rows.append([length, statistics.median(len(found) for _, found in indexed), statistics.median(ms),
                         ms[int(0.95 * (len(ms) - 1))], scan, scan / statistics.median(ms)])
        catalog.close()
    print(table(
        f"Text search over {args.lines:,} lines ({(args.lines + 2) // 3:,} items)",
        ["query chars", "items returned (median, at most 100)", "match_text ms (median)", "p95 ms", "scan ms", "scan ÷ match_text"], rows,
        [f"Written through put_lines at {args.lines / seconds:,.0f} lines/s; ocr_lines {sizes.get('ocr_lines', 0) / 2**20:.0f} MB, "
         f"the FTS5 index {sum(v for k, v in sizes.items() if k.startswith('ocr_fts')) / 2**20:.0f} MB. From 4 characters "
         "match_text also finds one-edit matches (the scan only exact ones). "
         f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end."],
    ))


if __name__ == "__main__":
    main()
