"""Start-up: the commands that load no model, against a bare `python -c pass` measured in the same run.

`tusou --help`, `tusou info DIR` (on an index of 8 images built here with test-tiny), `tusou models`,
path errors and an argument error should each finish within 0.5 s of the bare interpreter. Each
command runs as a user runs it: the `tusou` console script beside this Python, in a fresh process.
The runs go round-robin over the commands, so a burst of load from elsewhere on the machine falls
on every row alike; each row is the median of its runs.

    python -m bench.startup [--runs 15]
    PYTHONPATH=/path/to/other/checkout python -m bench.startup   # the same table for other code
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from bench.report import cpu_model, table, timed

BUDGET = 0.5
"""Seconds a command may take beyond `python -c pass`."""
BASELINE = "python -c pass"


def tusou() -> list[str]:
    """The console script of this Python's environment (`python -m ui.cli` where none is installed)."""
    script = Path(sys.executable).with_name("tusou")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ui.cli"]


def small_index(root: Path) -> Path:
    """An index of 8 plain images, built by the code under test with test-tiny."""
    folder, index = root / "photos", root / "index"
    folder.mkdir()
    for number in range(8):
        Image.new("RGB", (64, 48), (30 * number, 200 - 20 * number, 90)).save(folder / f"photo_{number}.png")
    subprocess.run([*tusou(), "index", str(folder), "--out", str(index), "--model", "test-tiny", "--workers", "0"],
                   check=True, capture_output=True)
    return index


def commands(index: Path) -> dict[str, tuple[list[str], int]]:
    """Each row: what it runs and the exit code that shows it did what the row says."""
    return {
        BASELINE: ([sys.executable, "-c", "pass"], 0),
        "tusou --help": ([*tusou(), "--help"], 0),
        "tusou info DIR": ([*tusou(), "info", str(index)], 0),
        "tusou models": ([*tusou(), "models"], 0),
        "tusou search /no/such/dir 红色 (path error)": ([*tusou(), "search", "/no/such/dir", "红色"], 2),
        "tusou index /no/such/dir --out DIR (path error)": ([*tusou(), "index", "/no/such/dir", "--out", str(index.parent / "new")], 2),
        "tusou search DIR 红色 --min-score 5 (argument error)": ([*tusou(), "search", str(index), "红色", "--min-score", "5"], 2),
    }


def run_once(argv: list[str], expected: int) -> float:
    seconds, result = timed(lambda: subprocess.run(argv, capture_output=True, text=True))
    if result.returncode != expected:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}, not {expected}:\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default: 15)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = commands(small_index(Path(tmp)))
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, (argv, expected) in rows.items():
                times[name].append(run_once(argv, expected))
    medians = {name: statistics.median(runs) for name, runs in times.items()}
    base = medians[BASELINE]
    table_rows = [
        [name, seconds, "" if name == BASELINE else seconds - base, "" if name == BASELINE else ("yes" if seconds - base <= BUDGET else "no")]
        for name, seconds in medians.items()
    ]
    notes = [
        f"{cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; median of {args.runs} runs each, "
        f"round-robin; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        f"Code under test: {_code_root()}",
    ]
    print(table("Start-up", ["command", "median s", f"beyond {BASELINE} (s)", f"within {BUDGET} s"], table_rows, notes))


def _code_root() -> str:
    """Where the `tusou` commands import their code from: PYTHONPATH first, then the installed
    package (-P: not the current folder, which the console script does not search either)."""
    result = subprocess.run([sys.executable, "-P", "-c", "import ui, pathlib; print(pathlib.Path(ui.__file__).parents[1])"],
                            capture_output=True, text=True)
    return result.stdout.strip()


if __name__ == "__main__":
    main()
