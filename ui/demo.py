"""`make demo`: a generated collection, indexed once with the `demo` model, then the search UI.

The collection (a few hundred drawn shapes with Chinese captions) is written on first use
and the index is cached beside it; later runs find both and start at once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from indexer.build import build_index
from indexer.plan import BuildPlan
from retrieval.datasets.synthetic import write_collection
from retrieval.errors import TusouError
from ui.app import serve

DEMO_ROOT = Path(".cache/demo")
COLLECTION_SIZE = 300


def prepare(root: Path = DEMO_ROOT, count: int = COLLECTION_SIZE, device: str = "auto") -> Path:
    """The demo index directory, built (or brought up to date) from the demo collection."""
    collection, index = root / "collection", root / "index"
    if not (collection / "captions.jsonl").exists():
        print(f"drawing {count} demo images into {collection} ...")
        write_collection(collection, count)
    summary = build_index(BuildPlan([collection], index, "demo", device=device))
    print(f"demo index {index}: {summary.total} images ({summary.added} newly embedded)")
    return index


def example_queries(root: Path = DEMO_ROOT, count: int = 6) -> list[str]:
    """Captions of the demo collection, as queries that fit it."""
    path = root / "collection" / "captions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    return list(dict.fromkeys(row["caption"] for row in rows))[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description="Set up the demo collection and index, then start the search UI.")
    parser.add_argument("--root", type=Path, default=DEMO_ROOT)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    try:
        index = prepare(args.root, device=args.device)
        print(f"tusou demo: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
        serve(index, host=args.host, port=args.port, device=args.device, examples=example_queries(args.root))
    except TusouError as exc:
        raise SystemExit(f"tusou: error: {exc}")


if __name__ == "__main__":
    main()
