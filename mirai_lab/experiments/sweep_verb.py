"""The `sweep` verb: plan, print or execute, then say what happened in one line."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mirai_lab.config import parse_set
from mirai_lab.errors import UserError
from mirai_lab.experiments.monitor import SweepMonitor
from mirai_lab.experiments.spec import axis_spec_path, load_plan
from mirai_lab.experiments.sweep import (
    manifest_path,
    run_sequential,
    spawn_workers,
    states,
    summary,
    to_train,
    worker_loop,
    write_manifest,
)

console = Console(stderr=True)


def run_sweep(*, axis: str | None, experiment: Path | None, set_items: list[str], budget: str | None,
              seeds: int | None, workers: int, storage: str | None, retry_failed: bool, dry_run: bool,
              root: Path, as_json: bool, as_worker: bool, argv: list[str]) -> dict[str, Any] | None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("sweep runs one process per run: start one sweep worker per GPU (CUDA_VISIBLE_DEVICES), "
                        "not under torchrun")
    path = axis_spec_path(axis) if axis else Path(experiment)  # type: ignore[arg-type]
    plan = load_plan(path, budget=budget, seeds=seeds, overrides=parse_set(set_items))
    if as_worker:
        write_manifest(plan, root, "mirai-lab " + shlex.join(argv))
        threads = int(os.environ.get("MIRAI_LAB_WORKER_THREADS", "0")) or None
        worker_loop(plan, root, storage, retry_failed, threads)
        return None
    st = states(plan, root)
    if dry_run:
        rows = [{"run_id": r.run_id, "variant": r.variant, "seed": r.seed, "status": st[r.run_id]}
                for r in plan.runs]
        if not as_json:
            table = Table(title=f"sweep {plan.name}: {len(plan.unique_runs)} runs ({plan.budget}); dry run")
            for col in ("run_id", "variant", "seed", "status"):
                table.add_column(col)
            for row in rows:
                table.add_row(*(str(row[c]) for c in ("run_id", "variant", "seed", "status")))
            Console().print(table)
        return {"name": plan.name, "runs": rows}
    command = "mirai-lab " + shlex.join(argv)
    mpath = write_manifest(plan, root, command)
    pending = to_train(plan, root, retry_failed)
    before = summary(plan, root)
    if not pending:
        line = (f"sweep {plan.name}: nothing to do, {before['done']} runs already done"
                + (f", {before['failed']} failed (use --retry-failed)" if before["failed"] else "")
                + f" -> {mpath}")
        if not as_json:
            console.print(line, highlight=False)
        return {"name": plan.name, "trained": 0, **before, "manifest": str(mpath)}
    t0 = time.perf_counter()
    with SweepMonitor(plan, root, quiet=as_json) as monitor:
        if workers > 1:
            threads = max(1, (os.cpu_count() or 1) // workers)
            log_dir = mpath.parent
            procs = spawn_workers([a for a in argv if a != "--as-worker"], workers, threads, log_dir)
            while any(p.poll() is None for p in procs):
                monitor.refresh()
                time.sleep(1.0)
            failed = [i for i, p in enumerate(procs) if p.returncode != 0]
            if failed:
                tail = (log_dir / f"worker-{failed[0]}.log").read_text().strip().splitlines() or ["no output"]
                raise UserError(f"sweep worker {failed[0]} failed: {tail[-1]} (see {log_dir}/worker-{failed[0]}.log)")
        elif storage is not None:
            worker_loop(plan, root, storage, retry_failed, None)
        else:
            run_sequential(plan, root, retry_failed, monitor)
    after = summary(plan, root)
    trained = after["done"] - before["done"]
    line = (f"sweep {plan.name}: {after['done']} done ({trained} trained now), {after['failed']} failed, "
            f"{after['pending'] + after['running']} left; {time.perf_counter() - t0:.0f}s -> {mpath}")
    if not as_json:
        console.print(line, highlight=False)
    return {"name": plan.name, "trained": trained, **after, "manifest": str(manifest_path(root, plan.name))}
