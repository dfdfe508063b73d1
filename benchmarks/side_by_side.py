"""Time to a verdict, old code against new: one paper table reproduced by two commits, one after
the other on this machine, each from a clean checkout into a results directory of its own.

What it measures is what a user waits for: `mirai-lab reproduce TABLE` at its defaults, cache
builds included, from a cold results directory. It writes one markdown file with both wall times
and their ratio, the CPU's model and matrix extensions, each table's verdicts side by side (a
faster table that says something else is no speed-up), and the new commit's time breakdown from
its report.

    python benchmarks/side_by_side.py --old REV --new REV --table table2 --workers 2 --out FILE.md

The two reproductions run one after the other, never side by side: run it on a quiet machine
(each takes tens of minutes at `quick` on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from mirai_lab.runs.provenance import cpu_matrix_extensions, cpu_model

REPO = Path(__file__).resolve().parent.parent


def checkout(rev: str, into: Path) -> str:
    """A clean clone of this repository at `rev`; returns the full commit."""
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", rev], check=True)
    return subprocess.run(["git", "-C", str(into), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def reproduce(code: Path, table: str, workers: int, results: Path, log: Path) -> float:
    """Wall seconds of `mirai-lab reproduce` run from the checkout `code` (this interpreter's packages)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, "-m", "mirai_lab", "reproduce", table, "--workers", str(workers),
               "--results-dir", str(results)]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(command, check=True, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def verdicts(report: Path) -> pd.DataFrame:
    """variant x verdict columns of a reproduction's table.csv."""
    table = pd.read_csv(report / "table.csv")
    return table.set_index("variant")[[c for c in table.columns if c.startswith("verdict_")]]


def markdown(frame: pd.DataFrame) -> list[str]:
    """A pipe table of `frame` and its index (pandas' own needs tabulate, which the project does not install)."""
    head = [frame.index.name or "", *frame.columns]
    rows = [[str(i), *map(str, row)] for i, row in zip(frame.index, frame.to_numpy(), strict=True)]
    return ["| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *rows]]


def breakdown(report: Path) -> list[str]:
    """The report's own paragraph on where the time went (absent in code that did not record it)."""
    lines = (report / "report.md").read_text().splitlines() if (report / "report.md").is_file() else []
    start = next((i for i, line in enumerate(lines) if line.startswith("## Time")), None)
    if start is None:
        return ["(this commit's report has no time breakdown)"]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start + 1:end] if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the commit before the speed work")
    parser.add_argument("--new", default="HEAD")
    parser.add_argument("--table", default="table2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        found = {}
        for arm, rev in (("old", args.old), ("new", args.new)):
            code = Path(tmp) / arm
            commit = checkout(rev, code)
            results = Path(tmp) / f"results-{arm}"
            wall = reproduce(code, args.table, args.workers, results, Path(tmp) / f"{arm}.log")
            report = results / args.table
            found[arm] = {"commit": commit, "wall": wall, "verdicts": verdicts(report),
                          "breakdown": breakdown(report)}
    old, new = found["old"], found["new"]
    joined = old["verdicts"].add_suffix(" (old)").join(new["verdicts"].add_suffix(" (new)"), how="outer")
    same = old["verdicts"].fillna("-").sort_index().equals(new["verdicts"].fillna("-").sort_index())
    command = "python benchmarks/side_by_side.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lines = [f"# Time to a verdict: `reproduce {args.table}`, old commit against new", "",
             f"Command: `{command}`", "",
             f"CPU: {cpu_model()}; matrix extensions: {', '.join(cpu_matrix_extensions()) or 'none named'}; "
             f"{os.cpu_count()} cores; {args.workers} workers, one after the other on a cold results directory.", "",
             "| arm | commit | wall (min) |", "|---|---|---:|",
             f"| old | {old['commit'][:12]} | {old['wall'] / 60:.1f} |",
             f"| new | {new['commit'][:12]} | {new['wall'] / 60:.1f} |", "",
             f"New / old wall time: **{new['wall'] / old['wall']:.2f}**; verdicts "
             f"{'the same' if same else 'DIFFER'}.", "", "## Verdicts", "",
             *markdown(joined.fillna("-")), "", "## Where the new commit's time went", "", *new["breakdown"], ""]
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
