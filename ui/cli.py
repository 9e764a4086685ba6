"""The `tusou` command line: index, search, label, models.

Every subcommand turns a user's mistake into one line on stderr and exit code 2;
`--json` output is one JSON object per line on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from retrieval.errors import TusouError
from retrieval.registry import DEFAULT_MODEL, MODELS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _add_model_options(parser: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", default=default, help=f"registry entry (default: {default or 'the index model'}); see `tusou models`")
    parser.add_argument("--text-weights", help="local transformers directory with the text tower's weights")
    parser.add_argument("--image-weights", help="local open_clip checkpoint file with the image tower's weights")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda (default: auto)")


def cmd_index(args: argparse.Namespace) -> None:
    from indexer.build import build_index

    summary = build_index(
        args.paths,
        args.out,
        args.model,
        device=args.device,
        text_weights=args.text_weights,
        image_weights=args.image_weights,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    if args.json:
        _print_json(summary.to_dict())
        return
    for item in summary.skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(
        f"{summary.index}: {summary.total} images "
        f"(added {summary.added}, updated {summary.updated}, removed {summary.removed}, "
        f"unchanged {summary.unchanged}, skipped {len(summary.skipped)})"
    )


def cmd_search(args: argparse.Namespace) -> None:
    from retrieval.searcher import Searcher

    if (args.query is None) == (args.image is None):
        raise TusouError("give either a text query or --image PATH (not both)")
    searcher = Searcher(args.index, device=args.device)
    results = searcher.search_text(args.query, args.k) if args.query is not None else searcher.search_image(args.image, args.k)
    for result in results:
        if args.json:
            _print_json({"rank": result.rank, "score": round(result.score, 6), "path": result.path})
        else:
            print(f"{result.rank:>3}  {result.score:.4f}  {result.path}")


def cmd_label(args: argparse.Namespace) -> None:
    from retrieval.model import load_model
    from retrieval.zero_shot import label_images, parse_labels

    labels = parse_labels(args.labels)
    templates = [t for t in args.templates.split("|")] if args.templates else None
    model = load_model(args.model, device=args.device, text_weights=args.text_weights, image_weights=args.image_weights)
    for image, scores in zip(args.images, label_images(model, args.images, labels, templates)):
        if args.json:
            for score in scores:
                _print_json({"image": image, "label": score.label, "probability": round(score.probability, 6)})
        else:
            print(image)
            for score in scores:
                print(f"  {score.probability:6.1%}  {score.label}")


def cmd_models(args: argparse.Namespace) -> None:
    from retrieval.model import weight_sources

    for entry in MODELS.values():
        info = weight_sources(entry)
        if args.json:
            _print_json(info)
        else:
            mark = "present" if info["present"] else "missing"
            default = " (default)" if entry.name == DEFAULT_MODEL else ""
            print(f"{entry.name}{default}: {entry.dim}-d, weights {mark}\n  text:  {info['text']}\n  image: {info['image']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tusou", description="图搜: search images with Chinese text or with images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build or update an index from image folders")
    index.add_argument("paths", nargs="+", metavar="PATH", help="image folders (walked recursively) or files")
    index.add_argument("--out", required=True, help="index directory to create or update")
    _add_model_options(index, default=None)
    index.add_argument("--batch-size", type=int, default=32)
    index.add_argument("--workers", type=int, default=None, help="decoding processes (default: min(4, cores))")
    _add_device(index)
    index.add_argument("--json", action="store_true", help="print one summary object at the end")
    index.set_defaults(run=cmd_index)

    search = commands.add_parser("search", help="search an index by text or by image")
    search.add_argument("index", metavar="DIR")
    search.add_argument("query", nargs="?", help="Chinese text query")
    search.add_argument("--image", help="search by this image instead of text")
    search.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    _add_device(search)
    search.add_argument("--json", action="store_true", help="one JSON object per result")
    search.set_defaults(run=cmd_search)

    label = commands.add_parser("label", help="zero-shot labels for images from a Chinese label list")
    label.add_argument("images", nargs="+", metavar="IMAGE")
    label.add_argument("--labels", required=True, help="comma-separated labels, e.g. 猫,狗,老虎")
    label.add_argument("--templates", help="prompt templates separated by |, each with {} (default: a Chinese set)")
    _add_model_options(label)
    _add_device(label)
    label.add_argument("--json", action="store_true", help="one JSON object per image and label")
    label.set_defaults(run=cmd_label)

    models = commands.add_parser("models", help="list the models and whether their weights are here")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except TusouError as exc:
        print(f"tusou: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tusou: interrupted (an index build keeps what it embedded: run it again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
