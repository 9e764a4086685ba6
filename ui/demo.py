"""`make demo`: a generated collection, indexed once with the `demo` model, then the search UI.

The collection is a few hundred drawn shapes with Chinese captions, and beside them, in `text/`,
posters, shop signs, chat screenshots, receipts and memes drawn with Chinese text (the OCR
benchmark's generator, eval.ocr_synthetic). The index reads the text in every picture (`--ocr`),
so a query naming a poster's words finds it, though the `demo` model knows only shapes and
colours. Both are written on first use and the index is cached beside them; later runs find
them and start at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.ocr_synthetic import generate, read_jsonl
from indexer.build import build_index
from indexer.plan import BuildPlan
from retrieval.datasets.synthetic import write_collection
from retrieval.errors import TusouError
from retrieval.ocr.engine import require_ocr
from ui.app import serve

DEMO_ROOT = Path(".cache/demo")
COLLECTION_SIZE = 300
TEXT_PICTURES = 30
TEXT_SEED = 7
"""Not the OCR benchmark's seeds (0 and 1 in docs/evaluation.md)."""
TEXT_EXAMPLES = ("sign", "chat", "poster")
"""The scenes whose text gives an example query (one each), after the shape captions."""


def prepare(root: Path = DEMO_ROOT, count: int = COLLECTION_SIZE, device: str = "auto", text_pictures: int = TEXT_PICTURES) -> Path:
    """The demo index directory, built (or brought up to date) from the demo collection; its text is
    read when the pictures with text could be drawn and the OCR is installed (else one line says why not)."""
    collection, index = root / "collection", root / "index"
    if not (collection / "captions.jsonl").exists():
        print(f"drawing {count} demo images into {collection} ...")
        write_collection(collection, count)
    ocr = text_pictures > 0 and _text_pictures(collection / "text", text_pictures)
    summary = build_index(BuildPlan([collection], index, "demo", device=device, ocr=ocr))
    print(f"demo index {index}: {summary.total} images ({summary.added} newly embedded)")
    return index


def _text_pictures(folder: Path, count: int) -> bool:
    """Whether `folder` holds the demo's pictures with text (drawn now if not) and the OCR can read them."""
    try:
        require_ocr()
        if not (folder / "queries.jsonl").exists():
            print(f"drawing {count} pictures with Chinese text into {folder} ...")
            generate(folder, count, TEXT_SEED, distractors=0)
    except TusouError as exc:
        print(f"demo: no pictures with text, and no text search: {exc}")
        return False
    return True


def example_queries(root: Path = DEMO_ROOT, count: int = 4) -> list[str]:
    """`count` captions of the demo collection, as queries that fit it, then the words of a sign, a
    chat screenshot and a poster (when they were drawn): what only the text finds."""
    captions = read_jsonl(root / "collection" / "captions.jsonl")
    pictures = read_jsonl(root / "collection" / "text" / "images.jsonl")
    texts = [next((_words(p["keys"]) for p in pictures if p["scene"] == scene), None) for scene in TEXT_EXAMPLES]
    return list(dict.fromkeys(row["caption"] for row in captions))[:count] + [text for text in texts if text]


def _words(keys: list[str]) -> str | None:
    """A picture's longest line of at most 8 characters (as typed: simplified, no spaces or punctuation)."""
    return max((key for key in keys if len(key) <= 8), key=len, default=None)


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
