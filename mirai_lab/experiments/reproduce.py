"""Paper-table reproductions: sweep + report into <results>/<table>/, with the environment.

Running it again trains nothing that is done and only re-renders the report.
"""

from __future__ import annotations

import os
import platform
import shlex
import time
from pathlib import Path

import optuna
import torch
import torch_fidelity

from mirai_lab.errors import UserError
from mirai_lab.experiments.spec import SPECS_DIR
from mirai_lab.experiments.sweep_verb import run_sweep
from mirai_lab.report.write import write_report
from mirai_lab.runs.store import write_json, write_text

TABLES = ("table1", "table2", "table3", "table4")


def environment() -> dict[str, str]:

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_fidelity": torch_fidelity.__version__, "optuna": optuna.__version__, "cpu": cpu,
            "cores": str(os.cpu_count()), "platform": platform.platform()}


def reproduce_table(table: str, root: Path, *, budget: str | None, seeds: int | None, workers: int,
                    set_items: list[str], argv: list[str]) -> Path:

    if table not in TABLES:
        raise UserError(f"{table!r}: expected one of {', '.join(TABLES)}")
    spec = SPECS_DIR / f"{table}.toml"
    t0 = time.perf_counter()
    sweep_args = ["sweep", "--experiment", str(spec), "--results-dir", str(root)] + \
        (["--budget", budget] if budget else []) + (["--seeds", str(seeds)] if seeds else []) + \
        [arg for item in set_items for arg in ("--set", item)]
    out = run_sweep(axis=None, experiment=spec, set_items=set_items, budget=budget, seeds=seeds, workers=workers,
                    storage=None, retry_failed=False, dry_run=False, root=root, as_json=False, as_worker=False,
                    argv=sweep_args)
    name = out["name"] if out else table
    target = root / table
    command = "mirai-lab " + shlex.join(argv)
    report = write_report(root, [name], target, command=command)
    write_text(target / "COMMAND", command + "\n")
    write_json(target / "environment.json", {**environment(), "wall_s_this_call": round(time.perf_counter() - t0, 1),
                                             "trained_this_call": (out or {}).get("trained", 0)})
    return report
