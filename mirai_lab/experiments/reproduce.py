"""Paper-table reproductions: sweep + report into <results>/<sweep name>/, with the environment.

At the spec's own budget and seeds the sweep is named after the table, so the report lands
in <results>/<table>/ (the committed one); any other budget, seed count or --set gives the
sweep, and so the folder, its own name (e.g. results/table2-smoke-s1/), so a quick check
never overwrites the committed report. Running it again trains nothing that is done and
only re-renders the report.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from mirai_lab.errors import UserError
from mirai_lab.experiments.adaptive import AdaptiveOptions, run_adaptive, sweep_argv
from mirai_lab.experiments.spec import SPECS_DIR
from mirai_lab.experiments.sweep_verb import run_sweep
from mirai_lab.messages import say
from mirai_lab.report.collect import load_manifests
from mirai_lab.report.write import write_report
from mirai_lab.runs.provenance import write_environment
from mirai_lab.runs.store import write_text

TABLES = ("table1", "table2", "table3", "table4")


def reproduce_table(table: str, root: Path, *, budget: str | None, seeds: int | None, workers: int,
                    set_items: list[str], argv: list[str], dry_run: bool = False,
                    adaptive: AdaptiveOptions | None = None) -> Path:
    """Train what is missing and write the report; returns the report (dry run: the folder it would fill)."""
    if table not in TABLES:
        raise UserError(f"{table!r}: expected one of {', '.join(TABLES)}")
    spec = SPECS_DIR / f"{table}.toml"
    t0 = time.perf_counter()
    sweep_args = ["sweep", "--experiment", str(spec), "--results-dir", str(root)] + \
        (["--budget", budget] if budget else []) + (["--seeds", str(seeds)] if seeds else []) + \
        [arg for item in set_items for arg in ("--set", item)]
    if adaptive is not None and not dry_run:  # rounds of seeds under one name (experiments/adaptive.py)
        out = run_adaptive(spec_path=spec, set_items=set_items, budget=budget, workers=workers, root=root,
                           options=adaptive, argv=sweep_argv(spec, root, budget, set_items, workers), as_json=False)
    else:
        out = run_sweep(axis=None, experiment=spec, set_items=set_items, budget=budget, seeds=seeds, workers=workers,
                        storage=None, retry_failed=False, dry_run=dry_run, root=root, as_json=False, as_worker=False,
                        argv=sweep_args)
    name = out["name"] if out else table
    target = root / name
    if dry_run:
        say(f"dry run: the report would go to {target}")
        return target
    command = "mirai-lab " + shlex.join(argv)
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
