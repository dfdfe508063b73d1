"""Paper-table reproductions: sweep + report into <results>/<sweep name>/, with the environment.

At the spec's own budget and seeds the sweep is named after the table, so the report lands
in <results>/<table>/ (the committed one); any other budget, seed count or --set gives the
sweep, and so the folder, its own name (e.g. results/table2-smoke-s1/), so a quick check
never overwrites the committed report. Running it again trains nothing that is done and
only re-renders the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mirai_lab.analysis.collect import load_manifests
from mirai_lab.errors import UserError
from mirai_lab.experiments.adaptive import AdaptiveOptions, run_adaptive
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import SPECS_DIR
from mirai_lab.experiments.sweep_verb import run_sweep
from mirai_lab.experiments.timing_record import timed_call
from mirai_lab.files.atomic import write_text
from mirai_lab.messages import say
from mirai_lab.report.write import write_report
from mirai_lab.runs.provenance import write_environment

TABLES = ("table1", "table2", "table3", "table4")


def reproduce_table(table: str, root: Path, *, budget: str | None, seeds: int | None, workers: int,
                    set_items: list[str], command: str, dry_run: bool = False,
                    adaptive: AdaptiveOptions | None = None) -> Path:
    """Train what is missing and write the report; returns the report (dry run: the folder it would fill).
    `command` is what the user typed, recorded in the manifest, the report and COMMAND."""
    if table not in TABLES:
        raise UserError(f"{table!r}: expected one of {', '.join(TABLES)}")
    t0 = time.perf_counter()
    request = SweepRequest(spec=SPECS_DIR / f"{table}.toml", command=command, set_items=tuple(set_items),
                           budget=budget, seeds=seeds, workers=workers, dry_run=dry_run)
    with timed_call(command):  # the sweep's time, into its timing.json before the report reads it
        if adaptive is not None and not dry_run:  # rounds of seeds under one name (experiments/adaptive.py)
            out = run_adaptive(request, root, adaptive)
        else:
            out = run_sweep(request, root)
    name = out["name"] if out else table
    target = root / name
    if dry_run:
        say(f"dry run: the report would go to {target}")
        return target
    report = write_report(root, [name], target, command=command)
    write_text(target / "COMMAND", command + "\n")
    write_report_environment(root, [name], target, wall_s_this_call=round(time.perf_counter() - t0, 1),
                             trained_this_call=(out or {}).get("trained", 0))
    return report


def write_report_environment(root: Path, sweeps: list[str], target: Path, **extra: Any) -> None:
    """environment.json beside a report; says on stderr when its runs come from different code."""
    run_ids = [r["run_id"] for m in load_manifests(root, sweeps).values() for r in m["runs"]]
    warning = write_environment(target, root, run_ids, sweeps=sweeps, **extra)
    if warning:
        say(warning)
