"""The `tusou` command line: index, reindex, info, search, label, ocr, train, distill, serve, eval, models, export.

Every subcommand turns a user's mistake into one line on stderr and exit code 2;
`--json` output is one JSON object per line on stdout.

Start-up stays cheap: this module imports only light modules, each subcommand adds its options
when it is the one parsed, and the arguments are checked while they are parsed (numbers against
their ranges, index folders and images by the library's own checks), so a mistake is reported
before torch, transformers, open_clip or a model loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from retrieval.errors import TusouError
from retrieval.models.registry import DEFAULT_MODEL, MODELS, check_builder, resolve_model
from retrieval.models.runtime import RUNTIMES, check_runtime, export_target, require_onnx
from ui.options import number, one_of, parsed

EXIT_USER_ERROR = 2
RESCAN_SECONDS = 60.0
EXIT_INTERRUPTED = 130
SEED_LIMIT = 2**32 - 1
"""The usual range of a seed; far larger ones overflow torch's generator in training."""


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are tusou's one line (`tusou: error: ...`, exit 2), not a usage dump.

    A `type=` that runs one of the library's checks raises its TusouError, which argparse lets
    through to `main`: the user reads the library's own message, at parse time."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"tusou: error: {message} (see `{self.prog} --help`)\n")


class _Command(_Parser):
    """A subcommand whose options are added when it first parses or prints its help, so each
    command imports only what its own options need (search's defaults come from
    retrieval.search.query, eval's dataset names from eval.datasets: both load numpy and Pillow)
    and `tusou --help` none of it."""

    def __init__(self, *args: Any, options: Callable[[argparse.ArgumentParser], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._add_options: Callable[[argparse.ArgumentParser], None] | None = options

    def _complete(self) -> None:
        if self._add_options is not None:
            add, self._add_options = self._add_options, None
            add(self)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def _existing(kind: str) -> Callable[[str], Path]:
    """An argparse type: a path that must be an existing `kind` ("folder" or "file")."""
    exists = Path.is_dir if kind == "folder" else Path.is_file

    def convert(text: str) -> Path:
        if not exists(Path(text)):
            raise argparse.ArgumentTypeError(f"no such {kind}: {text}")
        return Path(text)

    return convert


def _index_dir(text: str) -> str:
    """An index folder, checked by the manifest reader that every command runs later anyway."""
    from retrieval.store.manifest import read_manifest

    read_manifest(Path(text))
    return text


def _image(text: str) -> str:
    """A query image, decoded once here by the library's check: a missing or broken image is
    reported before the model loads, in the words `search` and `label` use."""
    from retrieval.images import load_query_image

    load_query_image(text)
    return text


def _size(text: str) -> str:
    from retrieval.sizes import parse_size

    parse_size(text)
    return text


def _model_name(name: str) -> str:
    """A registry entry, a student's name, or a folder `tusou distill` wrote."""
    resolve_model(name)
    return name


def _building_model(name: str) -> str:
    """A model to embed images with: a student has no image tower of its own to build an index by."""
    check_builder(name, resolve_model(name).entry)
    return name


def _model_names(spec: str) -> list[str]:
    """The registry entries of a comma-separated list, in order, each once: an unknown name
    anywhere fails here, before any model loads."""
    names = list(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))
    if not names:
        raise TusouError("no model named: give one, or several separated by commas (see `tusou models`)")
    for name in names:
        resolve_model(name)
    return names


def _print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _add_model_options(parser: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL, several: bool = False,
                       building: bool = False) -> None:
    kind = _model_names if several else _building_model if building else _model_name
    also = "" if building else ", or a folder `tusou distill` wrote"
    parser.add_argument("--model", default=default, type=kind,
                        help=f"registry entry{also} (default: {default or 'the index model'}); see `tusou models`")
    parser.add_argument("--text-weights", help="local transformers directory with the text tower's weights")
    parser.add_argument("--image-weights", help="local open_clip checkpoint file with the image tower's weights")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda (default: auto)")


def _add_index_type(parser: argparse.ArgumentParser, default: str | None) -> None:
    from retrieval.store.index_types import CHOICES

    kept = "the index's current type; auto for a new index" if default is None else default
    parser.add_argument("--index-type", choices=CHOICES, default=default, help=f"FAISS index type (default: {kept}); see docs/index-format.md")
    parser.add_argument("--max-index-memory", metavar="SIZE", type=_size, help="memory budget for the index, e.g. 1G or 800M (default: half of RAM)")


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="what runs text queries: torch (default), or ONNX Runtime in float32 (onnx) or with int8 weights "
                        "(onnx-int8), from the model's export, made and checked on first use in ~/.cache/tusou/onnx "
                        "(needs pip install 'tusou[onnx]'); see docs/performance.md")
    parser.add_argument("--onnx", metavar="FILE", type=_existing("file"),
                        help="run text queries from this export by `tusou export` (ONNX Runtime; its own float32 or int8)")


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the towers' precision (default: auto = bf16 on CPUs with AMX, else fp32)")


def _budget(args: argparse.Namespace) -> int | None:
    from retrieval.sizes import parse_size

    return parse_size(args.max_index_memory) if args.max_index_memory else None


def cmd_index(args: argparse.Namespace) -> None:
    from indexer.paths import expand_paths

    expand_paths(args.paths)  # a PATH that is not there is one line before any model code (the scan expands them again)
    ray = _ray_options(args)
    from indexer.build import build_index
    from indexer.plan import BuildPlan

    plan = BuildPlan(
        args.paths,
        args.out,
        args.model,
        device=args.device,
        text_weights=args.text_weights,
        image_weights=args.image_weights,
        batch_size=args.batch_size,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        index_type=args.index_type,
        max_index_memory=_budget(args),
        precision=args.precision,
        ray=ray,
        ocr=args.ocr,
    )
    summary = build_index(plan)
    if args.json:
        _print_json(summary.to_dict())
        return
    for item in summary.skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(
        f"{summary.index}: {summary.total} images "
        f"(added {summary.added}, updated {summary.updated}, removed {summary.removed}, "
        f"unchanged {summary.unchanged}, skipped {len(summary.skipped)}; embedded {summary.embedded}"
        + (f", {summary.resumed} more staged by an interrupted run" if summary.resumed else "")
        + (f"; text read in {summary.read}" if summary.read else "") + ")"
    )


def _ray_options(args: argparse.Namespace):
    """The Ray engine's settings, or None for a local build (whose flags they are not)."""
    if args.engine == "ray":
        from indexer.ray_engine import RayOptions

        return RayOptions(address=args.ray_address, gpus_per_worker=args.gpus_per_worker)
    for flag, value in (("--ray-address", args.ray_address), ("--gpus-per-worker", args.gpus_per_worker)):
        if value is not None:
            raise TusouError(f"{flag} is for --engine ray")
    return None


def cmd_reindex(args: argparse.Namespace) -> None:
    from indexer.reindex import reindex
    from retrieval.store.index_info import describe

    done = reindex(args.index, args.index_type, _budget(args), progress=not args.json)
    if args.json:
        _print_json(done.entry.to_dict())
        return
    if done.converted:
        print(f"{args.index}: converted to index format 2 (segments and an SQLite catalog), nothing embedded again")
    merged = f"{done.merged} segment{'s' * (done.merged != 1)} merged into one"
    print(f"{args.index}: {done.count} images, {merged}, {describe(done.entry)}")


def cmd_info(args: argparse.Namespace) -> None:
    from retrieval.sizes import format_size
    from retrieval.store.index_info import summary

    info = summary(args.index)
    if args.json:
        _print_json(info)
        return
    model = info["model"]
    print(f"{info['index']}: {info['count']} images, {info['dim']}-d")
    print(f"  model:  {model.get('name')} (weights fingerprint {model.get('fingerprint')})")
    print(f"  index:  {info['description']}")
    if info["format_version"] >= 2:
        print(f"  segments ({len(info['segments'])}):")
        for segment in info["segments"]:
            recall = "exact" if segment["type"] == "flat" else f"recall@10 {segment['recall_at_10']:.3f}"
            print(f"    {segment['id']:>6}  {segment['type']:<6}{segment['rows']:>12,} rows{segment['deleted']:>10,} deleted  "
                  f"{recall:<16} {format_size(segment['bytes'])}")
    sizes = ", ".join(f"{role} {format_size(size)}" for role, size in info["bytes_on_disk"].items())
    print(f"  files:  {sizes}")
    print(f"  generation {info['generation']}, format {info['format_version']}, written by tusou {info['tool_version']}, "
          f"created {info['created']}, updated {info['updated']}")


def cmd_search(args: argparse.Namespace) -> None:
    from ui.search_request import result_rows, search_query

    query = search_query(args, args.image)  # checked (an empty query, a bad filter) before torch and the model load
    check_runtime(args.runtime, args.onnx)
    model = _query_model(args.index, args.model, args.device)
    from retrieval.search.searcher import Searcher

    searcher = Searcher(args.index, device=args.device, precision=args.precision, model=model, runtime=args.runtime, onnx=args.onnx)
    try:
        results = searcher.search(query, args.k, args.offset)
    finally:
        searcher.close()  # the catalog's -wal and -shm go with its last connection
    if args.json:
        for row in result_rows(query, results):
            _print_json(row)
        return
    for result in results:
        folded = f"  (+{result.duplicates} near-duplicate{'s' * (result.duplicates > 1)})" if result.duplicates else ""
        taken = f"{(result.taken or '')[:10]:<10}  " if query.sort != "score" else ""  # the order's reason, shown
        print(f"{result.rank:>3}  {result.score:.4f}  {taken}{result.path}{folded}")
        if result.ocr is not None:
            print(f"     text: {result.ocr.text}")


def _query_model(index: str, model: str | None, device: str) -> Any:
    """The student to query `index` with, loaded once its name is checked against the index (a model that
    is not a student of the index's is one line); None: the index's own model, with the weights it was built by."""
    if model is None:
        return None
    from retrieval.store.manifest import check_model, read_manifest

    check_model(read_manifest(Path(index)), Path(index), model)
    from retrieval.models.model import student_model

    return student_model(model, device)


def cmd_label(args: argparse.Namespace) -> None:
    from retrieval.search.zero_shot import check_templates, label_images, parse_labels

    labels = parse_labels(args.labels)
    templates = check_templates(args.templates.split("|")) if args.templates else None
    from retrieval.models.model import load_model  # after the checks: a mistake costs no torch import

    model = load_model(args.model, device=args.device, text_weights=args.text_weights, image_weights=args.image_weights)
    for image, scores in zip(args.images, label_images(model, args.images, labels, templates)):
        if args.json:
            for score in scores:
                _print_json({"image": image, **score.to_dict()})
        else:
            print(image)
            for score in scores:
                print(f"  {score.probability:6.1%}  {score.label}")


def cmd_ocr(args: argparse.Namespace) -> None:
    from retrieval.ocr.engine import read_text

    for image in args.images:
        result = read_text(image)
        if result.reason:  # the image decoded when checked, then failed (changed since, or the OCR itself)
            raise TusouError(f"cannot read text in {image}: {result.reason}")
        if args.json:
            _print_json({"image": image, "lines": [line.to_dict() for line in result.lines]})
            continue
        print(image)
        for line in result.lines:
            corners = " ".join(f"{x:.0f},{y:.0f}" for x, y in line.box)
            print(f"  {line.confidence:.3f}  {line.text}  [{corners}]")
        if not result.lines:
            print("  (no text found)")


def cmd_train(args: argparse.Namespace) -> None:
    if args.model is None:
        raise TusouError("--model is required: the registry entry whose towers to train")
    from train.contrastive import TrainConfig, checkpoint_dir, train

    settings = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    log = train(TrainConfig(**settings))
    saved = checkpoint_dir(args.out)
    print(f"final loss {log[-1]['loss']:.4f} after {log[-1]['step']} steps; weights in {saved}: "
          f"--text-weights {saved / 'text'} --image-weights {saved / 'image.safetensors'}")


def cmd_distill(args: argparse.Namespace) -> None:
    from train.distill import DistillConfig, distill

    settings = {f.name: getattr(args, f.name) for f in fields(DistillConfig) if hasattr(args, f.name)}
    log = distill(DistillConfig(**settings))
    last = next(record for record in reversed(log) if "held_out_cosine" in record)
    print(f"final loss {log[-1]['loss']:.4f} after {log[-1]['step']} steps, held-out cosine to {args.teacher} "
          f"{last['held_out_cosine']:.4f}; search {args.teacher}'s indexes with it: --model {args.out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from retrieval.store.manifest import MANIFEST, check_model, read_manifest
    from ui.access import KEYS_VARIABLE, read_keys  # a bad key is one line before anything loads

    keys = read_keys(args.api_keys, os.environ.get(KEYS_VARIABLE, ""))
    check_runtime(args.runtime, args.onnx)
    index = Path(args.index)
    if args.watch and args.model and resolve_model(args.model).entry.teacher:
        raise TusouError(f"--watch embeds new images with the index's own model, and {args.model} is a student: "
                         "serve the student without --watch, beside a `tusou serve --watch` or `tusou index` of its teacher")
    watched = None
    if args.watch:  # DIR may be new: the watched folders build it
        from ui.watch import check_watch

        watched = check_watch(index, args.watch)
    elif args.rescan is not None:
        raise TusouError("--rescan is for --watch")
    if not args.watch or (index / MANIFEST).is_file():
        manifest = read_manifest(index)
        if args.model:
            check_model(manifest, index, args.model)
    from ui.app import serve  # gradio: after the checks

    examples = [q.strip() for q in args.examples.split("|") if q.strip()] if args.examples else None
    serve(args.index, host=args.host, port=args.port, device=args.device, examples=examples, precision=args.precision,
          keys=keys, client_concurrency=args.client_concurrency, max_batch=args.max_batch, watch=watched, model=args.model,
          rescan=RESCAN_SECONDS if args.rescan is None else args.rescan, runtime=args.runtime, onnx=args.onnx)


def cmd_export(args: argparse.Namespace) -> None:
    require_onnx()  # --out is checked as it is parsed
    from retrieval.models.model import load_model
    from retrieval.models.onnx_export import export_text_tower
    from retrieval.sizes import format_size

    model = load_model(args.model, device=args.device, text_weights=args.text_weights, image_weights=args.image_weights)
    report = export_text_tower(model, args.out, args.int8)
    kind = "int8 weights" if report.int8 else "float32"
    print(f"{report.path}: {model.name}'s text tower in ONNX ({kind}), lowest cosine to torch {report.lowest_cosine:.5f}, "
          f"{format_size(report.bytes)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from eval.datasets import reader

    if args.dataset not in ("imagenet-cn", "ocr-synthetic"):
        reader(args.dataset, args.format)  # a wrong --format is one line before any model code
    from eval.compare import check_weights, evaluate_each
    from eval.features import default_cache_dir
    from eval.report import comparison, comparison_table, table, write_comparison, write_reports
    from eval.run import EvalResult, evaluate_retrieval, evaluate_zero_shot
    from retrieval.models.model import EmbeddingModel, load_model

    names = args.model
    cache = None if args.no_cache else (args.cache or default_cache_dir())

    def evaluate(model: EmbeddingModel) -> EvalResult:
        if args.dataset == "imagenet-cn":
            return evaluate_zero_shot(model, args.data, args.split, args.templates, cache, args.batch_size)
        if args.dataset == "ocr-synthetic":
            from eval.ocr_search import evaluate_ocr_search

            return evaluate_ocr_search(model, args.data, args.batch_size)
        return evaluate_retrieval(model, args.dataset, args.data, args.split, args.format, cache, args.batch_size)

    if len(names) == 1:
        result = evaluate(load_model(names[0], device=args.device, text_weights=args.text_weights, image_weights=args.image_weights))
        if args.out:
            write_reports(result, args.out)
        if args.json:
            _print_json(result.results)
        else:
            print(table(result.results))
            if args.out:
                print(f"reports in {args.out}: results.json, report.md, recall.png" + (", predictions.jsonl" if result.predictions else ""))
        return
    if args.text_weights or args.image_weights:
        raise TusouError("--text-weights and --image-weights belong to one model: use them with a single --model")
    check_weights(names)
    results = evaluate_each(names, lambda name: load_model(name, device=args.device), evaluate)
    runs = [result.results for result in results]
    if args.out:
        write_comparison(results, args.out)
    if args.json:
        _print_json(comparison(runs))
    else:
        print(comparison_table(runs))
        if args.out:
            print(f"reports in {args.out}: comparison.md, comparison.json, and each model's own reports in {args.out}/<model>/")


def cmd_models(args: argparse.Namespace) -> None:
    """The registry's facts; the parameter counts are data, so only --measure builds anything.

    Students (one per UER miniature size) follow the models, a line each: their text tower's share of
    their teacher's FLOPs per query, and their ms per query with --measure."""
    import gc

    from retrieval.models.footprint import format_count, measure, text_flops
    from retrieval.models.families import weight_sources

    names = args.names or list(MODELS)
    specs = {name: resolve_model(name) for name in names}
    labels = {name: f"{spec.entry.name} (default)" if name == DEFAULT_MODEL else spec.entry.name for name, spec in specs.items()}
    width = max(map(len, labels.values())) + 2
    timed = "ms/query" if args.measure else ""
    shown_students = False
    if not args.json and any(spec.entry.teacher is None for spec in specs.values()):
        print(f"{'model':<{width}}{'dim':>5}  {'parameters':<13}{'weights':<9}{timed}".rstrip(), flush=True)
    for name, spec in specs.items():
        entry = spec.entry
        info = weight_sources(entry, spec.text_weights)
        counts, footprint, problem = entry.parameters, None, None
        if args.measure:
            try:
                footprint = measure(name, latency=True)
                counts = footprint.parameters
            except TusouError as exc:  # an architecture that needs files this machine does not have
                problem = str(exc)
            gc.collect()
            info["text_query_ms"] = round(footprint.text_query_ms, 2) if footprint else None
        info["parameters"] = {"text": counts.text, "image": counts.image} if counts else None
        share = None
        if entry.teacher is not None:
            share = text_flops(entry) / text_flops(resolve_model(entry.teacher).entry)
            info |= {"teacher": entry.teacher, "teacher_flops_share": round(share, 4)}
        if args.json:
            _print_json(info | ({"not_built": problem} if problem else {}))
            continue
        latency = (f"{footprint.text_query_ms:8.1f}" if footprint else f"{'—':>8}") if args.measure else ""
        if share is not None:
            if not shown_students:
                print(("\n" if any(spec.entry.teacher is None for spec in specs.values()) else "") + f"{'student':<{width}}{'dim':>5}  {'text':<7}{'FLOPs':>7}  {'weights':<9}{timed}".rstrip())
                shown_students = True
            weights = "present" if info["present"] else "distil"
            print(f"{labels[name]:<{width}}{info['dim']:>5}  {format_count(counts.text):<7}{share:>7.1%}  {weights:<9}{latency}".rstrip(), flush=True)
            continue
        parameters = f"{format_count(counts.text)} + {format_count(counts.image)}" if counts else "—"
        weights = "present" if info["present"] else "missing"
        print(f"{labels[name]:<{width}}{info['dim']:>5}  {parameters:<13}{weights:<9}{latency}".rstrip())
        print(f"    text:  {info['text']}\n    image: {info['image']}" + (f"\n    not built: {problem}" if problem else ""), flush=True)
    if shown_students:
        print("    FLOPs: of a text query, against the teacher's at its context length; the image tower is the teacher's\n"
              "    (distil the weights with `tusou distill`, then use the folder it writes as --model DIR)")


def _index_options(index: argparse.ArgumentParser) -> None:
    index.add_argument("paths", nargs="+", metavar="PATH", help="image folders (walked recursively) or files; SHARD.tar or shards/{000000..000009}.tar "
                       "(webdataset tar shards); list:FILE (one PATH or URL a line); URLs (http://, s3://, ...) via fsspec")
    index.add_argument("--out", required=True, help="index directory to create or update")
    _add_model_options(index, default=None, building=True)
    index.add_argument("--batch-size", type=number(int, 1), default=32)
    index.add_argument("--workers", type=number(int, 0), default=None,
                       help="local: decoding processes (default: min(4, cores)); ray: embedding actors (default: one per GPU, else CPUs/2)")
    index.add_argument("--checkpoint-every", type=number(int, 1), default=1024, metavar="N",
                       help="images embedded between saves to the index's staging (the most a killed build loses; default 1024)")
    index.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="embed in this process (local) or on a Ray cluster (ray; needs pip install 'tusou[ray]'); see docs/scaling.md")
    index.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to embed on (default: RAY_ADDRESS, else one started on this machine)")
    index.add_argument("--gpus-per-worker", type=number(float, 0), metavar="N",
                       help="GPUs per embedding actor (default: 1 when the cluster has GPUs, else 0)")
    index.add_argument("--ocr", action=argparse.BooleanOptionalAction, default=None,
                       help="read the Chinese (and other) text in the images, to search it (needs pip install 'tusou[ocr]'); "
                       "--no-ocr stops it; the index remembers (default: as it was built, a new index without)")
    _add_index_type(index, default=None)
    _add_precision(index)
    _add_device(index)
    index.add_argument("--json", action="store_true", help="print one summary object at the end")
    index.set_defaults(run=cmd_index)


def _reindex_options(rebuild: argparse.ArgumentParser) -> None:
    rebuild.add_argument("index", metavar="DIR", type=_index_dir)
    _add_index_type(rebuild, default=None)
    rebuild.add_argument("--json", action="store_true", help="print the merged segment's index entry")
    rebuild.set_defaults(run=cmd_reindex)


def _info_options(information: argparse.ArgumentParser) -> None:
    information.add_argument("index", metavar="DIR", type=_index_dir)
    information.add_argument("--json", action="store_true")
    information.set_defaults(run=cmd_info)


def _search_options(search: argparse.ArgumentParser) -> None:
    # the ranges of --weight, --min-score and --dedupe are Query's own, checked by it in cmd_search
    from retrieval.search.query import DEDUPE_THRESHOLD, IMAGE_WEIGHT, MATCHES

    search.add_argument("index", metavar="DIR", type=_index_dir)
    search.add_argument("query", nargs="?", help="Chinese text query")
    search.add_argument("--image", type=_image, help="search by this image (alone, or mixed with the text query)")
    search.add_argument("--model", type=_model_name, metavar="STUDENT",
                        help="embed the query with a student of the index's model (`tusou distill`; a folder or a name) "
                        "instead of the index's own: the index is searched as it is")
    search.add_argument("--weight", type=parsed(float), help=f"the image's share when mixed with text, 0..1 (default: {IMAGE_WEIGHT})")
    search.add_argument("--not", dest="negatives", action="append", default=[], metavar="TEXT",
                        help="push down images that look like TEXT (repeatable)")
    search.add_argument("--min-score", type=parsed(float), help="drop results scoring below this (-1..1)")
    search.add_argument("--dedupe", type=parsed(float), nargs="?", const=DEDUPE_THRESHOLD, metavar="THRESHOLD",
                        help=f"fold near-duplicate results (stored-vector cosine >= THRESHOLD, default {DEDUPE_THRESHOLD}) into one")
    search.add_argument("--match", type=one_of(MATCHES), choices=MATCHES,
                        help="find images by how they look (visual), by the text read in them (text), or both in one ranking "
                        "(default: both when the index was built with --ocr, else visual)")
    search.add_argument("-k", type=number(int, 1), default=10, help="number of results (default: 10)")
    search.add_argument("--offset", type=number(int, 0), default=0, help="skip this many results first (the next page)")
    _filter_options(search)
    _add_precision(search)
    _add_runtime(search)
    _add_device(search)
    search.add_argument("--json", action="store_true", help="one JSON object per result")
    search.set_defaults(run=cmd_search)


def _filter_options(search: argparse.ArgumentParser) -> None:
    """The filters and the sort order; their values are checked by make_filters and Query."""
    from retrieval.search.query import SORTS

    search.add_argument("--after", metavar="DATE", help="taken on or after DATE (2024, 2024-06, 2024-06-01 or 2024-06-01T08:30)")
    search.add_argument("--before", metavar="DATE", help="taken before DATE")
    search.add_argument("--in", dest="folders", action="append", default=[], metavar="PATH_PREFIX",
                        help="only images in this folder or below it (repeatable: any of them)")
    search.add_argument("--type", dest="types", metavar="TYPES", help="only these file types, e.g. jpg,png")
    search.add_argument("--camera", metavar="TEXT", help="only photos whose camera make or model contains TEXT")
    search.add_argument("--near", metavar="LAT,LON,KM", help="only photos taken within KM km of LAT,LON")
    search.add_argument("--sort", type=one_of(SORTS), choices=SORTS, default="score",
                        help="score (default), or newest / oldest first among the best results")


def _label_options(label: argparse.ArgumentParser) -> None:
    label.add_argument("images", nargs="+", metavar="IMAGE", type=_image)
    label.add_argument("--labels", required=True, help="comma-separated labels, e.g. 猫,狗,老虎")
    label.add_argument("--templates", help="prompt templates separated by |, each with {} (default: a Chinese set)")
    _add_model_options(label)
    _add_device(label)
    label.add_argument("--json", action="store_true", help="one JSON object per image and label")
    label.set_defaults(run=cmd_label)


def _ocr_options(ocr: argparse.ArgumentParser) -> None:
    ocr.add_argument("images", nargs="+", metavar="IMAGE", type=_image)
    ocr.add_argument("--json", action="store_true", help="one JSON object per image: its lines' text, confidence and box")
    ocr.set_defaults(run=cmd_ocr)


def _train_options(training: argparse.ArgumentParser) -> None:
    training.add_argument("--data", required=True, type=_existing("folder"), help="folder with train_imgs.tsv and train_texts.jsonl")
    training.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, resumed when re-run")
    _add_model_options(training, default=None)
    training.add_argument("--pretrained", action="store_true", help="start from the entry's released weights")
    training.add_argument("--freeze-image", action="store_true", help="train only the text tower (how Taiyi-CLIP was made)")
    training.add_argument("--epochs", type=number(int, 1), default=4)
    training.add_argument("--batch-size", type=number(int, 1), default=128)
    training.add_argument("--lr", type=number(float, 0, above=True), default=1e-3)
    training.add_argument("--seed", type=number(int, 0, SEED_LIMIT), default=0)
    training.add_argument("--checkpoint-every", type=number(int, 1), default=200, help="steps between checkpoints")
    _add_device(training)
    training.set_defaults(run=cmd_train)


def _teacher(name: str) -> str:
    """A teacher: a registered BERT + open_clip model (a student's image tower is its)."""
    from retrieval.models.registry import student_entry

    student_entry(name, 1, 64)
    return name


def _distill_options(distilling: argparse.ArgumentParser) -> None:
    from train.losses import LOSSES
    from train.texts import SOURCES, check_source

    distilling.description = ("Train a small text tower to reproduce a teacher's text vectors on text alone; it keeps the "
                              "teacher's image tower, so it searches the teacher's indexes as they are. See docs/models.md.")
    distilling.add_argument("--teacher", required=True, type=_teacher, help="the model to learn from, e.g. taiyi-clip-l14 or demo")
    distilling.add_argument("--student", required=True, metavar="ARCH_OR_DIR",
                            help="L<layers>-H<width> (UER's miniatures: L2..L12, H128..H768, weights from the hub; other sizes "
                            "with --random), a hub id uer/chinese_roberta_L-4_H-512, or a folder with a local copy")
    distilling.add_argument("--texts", required=True, nargs="+", type=check_source, metavar="SOURCE", help=f"texts to learn on: {SOURCES}")
    distilling.add_argument("--out", required=True, type=Path, help="the student's folder: checkpoints, resumed when re-run; --model DIR loads it")
    distilling.add_argument("--steps", type=number(int, 1), default=2000)
    distilling.add_argument("--batch-size", type=number(int, 1), default=128)
    distilling.add_argument("--lr", type=number(float, 0, above=True), default=1e-3)
    distilling.add_argument("--loss", choices=LOSSES, default="cosine",
                            help="cosine: match the teacher's directions (default); mse: its unit vectors; both: the sum")
    distilling.add_argument("--random", action="store_true", help="start from the architecture at random, with the teacher's vocabulary")
    distilling.add_argument("--seed", type=number(int, 0, SEED_LIMIT), default=0)
    distilling.add_argument("--checkpoint-every", type=number(int, 1), default=200, help="steps between checkpoints")
    _add_device(distilling)
    distilling.set_defaults(run=cmd_distill)


def _serve_options(serving: argparse.ArgumentParser) -> None:
    from retrieval.search.encoder import MAX_BATCH
    from ui.access import CLIENT_CONCURRENCY

    serving.add_argument("index", metavar="DIR", help="the index to serve (with --watch: built from the watched folders if new)")
    serving.add_argument("--host", default="127.0.0.1",
                         help="address to bind (default: 127.0.0.1, this machine only; another needs an API key)")
    serving.add_argument("--port", type=number(int, 1, 65535), default=7860)
    serving.add_argument("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
                         help="require this key (repeatable; also TUSOU_API_KEYS, comma-separated): the API wants "
                         "`Authorization: Bearer KEY`, the UI a login at /login; see docs/api.md")
    serving.add_argument("--client-concurrency", type=number(int, 1), default=CLIENT_CONCURRENCY, metavar="N",
                         help=f"API requests one client (a key, else an address) may have in flight at once (default: {CLIENT_CONCURRENCY})")
    serving.add_argument("--max-batch", type=number(int, 1), default=MAX_BATCH, metavar="N",
                         help=f"concurrent queries run through a tower as one batch, at most (default: {MAX_BATCH}; 1: each alone)")
    serving.add_argument("--examples", help="example queries separated by |")
    serving.add_argument("--model", type=_model_name,
                         help="the model the index must have been built with (checked), or a student of it (`tusou distill`; "
                         f"its folder or name), which then embeds the text queries; with --watch, a new index's (default: {DEFAULT_MODEL})")
    serving.add_argument("--watch", nargs="+", action="extend", metavar="PATH",
                         help="keep the index in step with these folders: what appears, changes or goes is indexed within "
                         "seconds (the index must hold images from these folders only); see docs/cli.md")
    serving.add_argument("--rescan", type=number(float, 0), metavar="SECONDS",
                         help=f"with --watch, also look the folders over every SECONDS, for file systems that send no "
                         f"events (NFS, SMB; default {RESCAN_SECONDS:g}; 0: events only)")
    _add_precision(serving)
    _add_runtime(serving)
    _add_device(serving)
    serving.set_defaults(run=cmd_serve)


def _export_options(export: argparse.ArgumentParser) -> None:
    _add_model_options(export)
    export.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the one format; default)")
    export.add_argument("--out", required=True, type=export_target, metavar="FILE", help="the .onnx file to write (replaced only by a checked export)")
    export.add_argument("--int8", action="store_true",
                        help="int8 weights (onnxruntime's dynamic quantisation): smaller and faster, checked to a looser bound")
    export.add_argument("--device", choices=("cpu",), default="cpu", help="cpu: the export and its check run there, as ONNX Runtime does")
    export.set_defaults(run=cmd_export)


def _eval_options(evaluation: argparse.ArgumentParser) -> None:
    from eval.datasets import DATASETS

    evaluation.description = ("Evaluate one model, or several: --model a,b,c runs each in turn (one in memory at a time) "
                              "and prints one table of all of them, with the published figures beneath each.")
    evaluation.add_argument("--dataset", required=True, choices=DATASETS)
    evaluation.add_argument("--data", required=True, type=_existing("folder"),
                            help="the dataset folder (layouts: see docs/evaluation.md; ocr-synthetic: drawn into it when empty)")
    evaluation.add_argument("--format", help="flickr30k-cn: cnclip (default) or cna; coco-cn: cnclip; wukong50k: csv")
    evaluation.add_argument("--split", default=None, help="default: test (imagenet-cn: val)")
    evaluation.add_argument("--templates", type=_existing("file"), help="imagenet-cn: a file of prompt templates, one per line with {}")
    _add_model_options(evaluation, several=True)
    evaluation.add_argument("--batch-size", type=number(int, 1), default=64)
    evaluation.add_argument("--cache", type=Path, help="feature cache folder (default: ~/.cache/tusou/features)")
    evaluation.add_argument("--no-cache", action="store_true", help="always re-embed")
    evaluation.add_argument("--out", type=Path, help="write results.json, report.md, recall.png, predictions.jsonl here "
                            "(several models: comparison.md, comparison.json and one folder per model)")
    _add_device(evaluation)
    evaluation.add_argument("--json", action="store_true", help="print results.json to stdout (several models: one object, a list of them)")
    evaluation.set_defaults(run=cmd_eval)


def _models_options(models: argparse.ArgumentParser) -> None:
    models.add_argument("names", nargs="?", type=_model_names, metavar="NAME[,NAME...]", help="only these models (default: all)")
    models.add_argument("--measure", action="store_true",
                        help="also time one text query on each text tower at its real size with random weights (CPU, float32, "
                             "median of 5 after a warm-up): seconds to tens of seconds per model and up to the text tower's "
                             "float32 size in memory (1.3 GB for RoBERTa-large); name models to measure only those")
    models.add_argument("--json", action="store_true", help="one JSON object per model")
    models.set_defaults(run=cmd_models)


COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("index", "build or update an index from image folders, shards, list files or URLs", _index_options),
    ("reindex", "rebuild an index as another type from its stored embeddings", _reindex_options),
    ("info", "what an index holds: model, type, tuned recall, sizes", _info_options),
    ("search", "search an index by text, by image, or both", _search_options),
    ("label", "zero-shot labels for images from a Chinese label list", _label_options),
    ("ocr", "the lines of text in images: text, confidence and box (needs pip install 'tusou[ocr]')", _ocr_options),
    ("train", "contrastive training on a Chinese-CLIP layout dataset", _train_options),
    ("distill", "distil a small, fast text tower from a model's, for its indexes as they are", _distill_options),
    ("serve", "the search UI and its JSON API over an index", _serve_options),
    ("eval", "Top-1/5/10 retrieval or zero-shot accuracy on a benchmark", _eval_options),
    ("models", "the models: dimension, parameters, where their weights come from", _models_options),
    ("export", "a model's text tower as ONNX, checked against torch (needs pip install 'tusou[onnx]')", _export_options),
)
"""Each subcommand: its name, its line in `tusou --help`, and what adds its options."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tusou", description="图搜: search images with Chinese text or with images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Command)
    for name, summary, options in COMMANDS:
        commands.add_parser(name, help=summary, options=options)
    return parser


def _escape_undecodable_names() -> None:
    """File names that are not valid UTF-8 reach Python as lone surrogates; a strict UTF-8
    stdout would crash printing them. As backslash escapes they stay readable, and inside
    `--json` output `\udcff` is a valid JSON escape of the same string."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


BUILDS = ("index", "reindex")
"""Commands an interrupt leaves a build to resume of (a serve --watch build resumes at the next start by itself)."""


def main(argv: Sequence[str] | None = None) -> int:
    _escape_undecodable_names()
    args = None
    try:
        args = build_parser().parse_args(argv)
        logging.getLogger().setLevel(logging.ERROR)
        if args.command == "eval" and args.split is None:
            args.split = "val" if args.dataset == "imagenet-cn" else "test"
        run: Callable[[argparse.Namespace], None] = args.run
        run(args)
    except TusouError as exc:
        print(f"tusou: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        building = args is not None and args.command in BUILDS
        print("tusou: interrupted" + (" (an index build keeps what it embedded: run it again to resume)" if building else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
