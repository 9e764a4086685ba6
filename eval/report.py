"""Reports of an evaluation run: a terminal table, report.md, a recall@K plot, predictions."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from eval.run import EvalResult
from retrieval.atomic import atomic_write_text


def table(results: dict) -> str:
    """Measured beside published, one metric per line."""
    counts = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in results["counts"].items())
    lines = [f"{results['dataset']} {results['split']} · model {results['model']['name']} · {counts}",
             f"{'metric':<22}{'measured':>10}{'published':>11}"]
    for metric, value in results["metrics"].items():
        reference = results["published"].get(metric)
        lines.append(f"{metric:<22}{value:>10.2f}{'' if reference is None else f'{reference:.2f}':>11}")
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
        pen.text((x, base + 8), metric.replace("text_to_image_", "t2i ").replace("image_to_text_", "i2t "), fill="black", font=font)
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
