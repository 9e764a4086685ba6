"""Reports of an evaluation run: a terminal table, report.md, a recall@K plot, predictions;
and for several models on one benchmark, one comparison table beside their own reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

from eval.run import EvalResult
from retrieval.store.atomic import atomic_write_text


def _counts(counts: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items())


def short_name(metric: str) -> str:
    """A metric's name at column width: t2i / i2t for the two retrieval directions."""
    for long, short in (("text_to_image_", "t2i "), ("image_to_text_", "i2t "), ("mean_per_class_recall", "per-class"),
                        ("mean_recall", "mean R")):
        metric = metric.replace(long, short)
    return metric


def table(results: dict) -> str:
    """Measured beside published, one metric per line."""
    width = max(map(len, ["metric", *results["metrics"]])) + 2
    lines = [f"{results['dataset']} {results['split']} · model {results['model']['name']} · {_counts(results['counts'])}",
             f"{'metric':<{width}}{'measured':>10}{'published':>11}"]
    for metric, value in results["metrics"].items():
        reference = results["published"].get(metric)
        lines.append(f"{metric:<{width}}{value:>10.2f}{'' if reference is None else f'{reference:.2f}':>11}")
    if results["published_source"]:
        lines.append(f"published: {results['published_source']}")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    rows = "\n".join(
        f"| {metric} | {value:.2f} | {results['published'].get(metric, '—')} |" for metric, value in results["metrics"].items()
    )
    missing = "".join(f"- {json.dumps(m, ensure_ascii=False)}\n" for m in results["missing"][:50])
    more = f"- … and {len(results['missing']) - 50} more\n" if len(results["missing"]) > 50 else ""
    settings = "".join(f"- {k}: {v}\n" for k, v in results["settings"].items())
    return (
        f"# {results['dataset']} ({results['split']}) — {results['model']['name']}\n\n"
        f"Model weights fingerprint `{results['model']['fingerprint']}`. "
        f"Counts: {', '.join(f'{k} {v}' for k, v in results['counts'].items())}.\n\n"
        f"| metric | measured | published |\n|---|---|---|\n{rows}\n\n"
        + (f"Published figures: {results['published_source']}.\n\n" if results["published_source"] else "")
        + f"## Settings\n\n{settings}\n## Missing or unreadable images ({len(results['missing'])})\n\n{missing}{more}"
    )


def plot(results: dict, path: Path) -> None:
    """Grouped bars of every recall/accuracy metric, measured (dark) beside published (light)."""
    metrics = [m for m in results["metrics"] if m != "mean_recall"]
    width, height, margin = 120 * len(metrics) + 80, 420, 50
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    base = height - margin - 30
    pen.line([(margin, base), (width - 20, base)], fill="black")
    for tick in range(0, 101, 20):
        y = base - tick * (base - margin) / 100
        pen.line([(margin - 4, y), (width - 20, y)], fill=(230, 230, 230) if tick else "black")
        pen.text((8, y - 6), f"{tick}", fill="black", font=font)
    for i, metric in enumerate(metrics):
        x = margin + 20 + i * 120
        for offset, value, colour in ((0, results["metrics"][metric], (40, 90, 180)),
                                      (40, results["published"].get(metric), (170, 200, 240))):
            if value is not None:
                top = base - value * (base - margin) / 100
                pen.rectangle([x + offset, top, x + offset + 36, base], fill=colour)
                pen.text((x + offset, top - 14), f"{value:.1f}", fill="black", font=font)
        pen.text((x, base + 8), short_name(metric), fill="black", font=font)
    pen.text((margin, 12), f"{results['dataset']} {results['split']} / {results['model']['name']}: measured (dark) vs published (light)",
             fill="black", font=font)
    image.save(path)


def write_reports(result: EvalResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result.results, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown(result.results))
    plot(result.results, out / "recall.png")
    if result.predictions:
        atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in result.predictions))


class Row(NamedTuple):
    """One line of a comparison: a model's measured figures, or the published ones beneath them."""

    label: str
    cells: list[str]
    published: bool


def _comparison_rows(runs: list[dict]) -> tuple[list[str], list[Row]]:
    """Column names, and one row per model with its published figures in the row beneath
    (— where its source gives none for a metric)."""
    metrics = list(runs[0]["metrics"])
    rows = []
    for run in runs:
        rows.append(Row(run["model"]["name"], [f"{run['metrics'][m]:.2f}" for m in metrics], False))
        if run["published"]:
            rows.append(Row("published", [f"{run['published'][m]:.2f}" if m in run["published"] else "—" for m in metrics], True))
    return [short_name(m) for m in metrics], rows


def _comparison_notes(runs: list[dict]) -> list[tuple[str, str]]:
    """(model, note) pairs: counts that differ from the first model's, and each published source."""
    notes = [(run["model"]["name"], f"counts {_counts(run['counts'])}") for run in runs[1:] if run["counts"] != runs[0]["counts"]]
    return notes + [(run["model"]["name"], f"published: {run['published_source']}") for run in runs if run["published_source"]]


def comparison_table(runs: list[dict]) -> str:
    """Models as rows, the dataset's metrics as columns, published figures beneath each model."""
    columns, rows = _comparison_rows(runs)
    labels = [f"  {row.label}" if row.published else row.label for row in rows]
    label_width = max(len("model"), *map(len, labels)) + 2
    widths = [max(len(column), 6) + 2 for column in columns]
    first = runs[0]
    lines = [f"{first['dataset']} {first['split']} · {len(runs)} models · {_counts(first['counts'])}",
             "model".ljust(label_width) + "".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += [label.ljust(label_width) + "".join(c.rjust(w) for c, w in zip(row.cells, widths)) for label, row in zip(labels, rows)]
    lines += [f"{model}: {note}" for model, note in _comparison_notes(runs)]
    return "\n".join(lines)


def comparison_markdown(runs: list[dict]) -> str:
    columns, rows = _comparison_rows(runs)
    lines = [f"| model | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {'↳ published' if row.published else row.label} | {' | '.join(row.cells)} |" for row in rows]
    notes = "".join(f"- {model}: {note}\n" for model, note in _comparison_notes(runs))
    reports = " · ".join(f"[{run['model']['name']}]({run['model']['name']}/report.md)" for run in runs)
    first = runs[0]
    return (
        f"# {first['dataset']} ({first['split']}) — {', '.join(run['model']['name'] for run in runs)}\n\n"
        f"Counts: {_counts(first['counts'])}.\n\n" + "\n".join(lines) + "\n\n"
        + (f"{notes}\n" if notes else "") + f"Each model's own report: {reports}.\n"
    )


def comparison(runs: list[dict]) -> dict:
    """comparison.json and `--json`: the dataset, and every model's results.json in order."""
    return {"dataset": runs[0]["dataset"], "split": runs[0]["split"], "models": runs}


def write_comparison(results: list[EvalResult], out: Path) -> None:
    """Each model's reports in `out/<model>/`, and comparison.md / comparison.json in `out`."""
    for result in results:
        write_reports(result, out / result.results["model"]["name"])
    runs = [result.results for result in results]
    atomic_write_text(out / "comparison.json", json.dumps(comparison(runs), ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", comparison_markdown(runs))
