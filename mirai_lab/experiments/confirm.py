"""Confirmation on fresh seeds: a second, separate look at every resolved row of a sweep.

A verdict found on seeds 0..n-1 is tested again on a disjoint block (seeds from
spec.CONFIRMATION_SEEDS on, which no sweep may use for exploration): the baseline and each
resolved row are trained on the fresh seeds from the configs the sweep's manifest recorded, and
each row's paired difference on the fresh block gets a plain 95% interval of its own, never
pooled with the first look. Per row and metric:

- replicated: the fresh verdict is the original one (better, worse or equivalent);
- not replicated: the fresh interval is settled and says something else (the opposite sign, or
  equivalent where a difference was found, or a difference where equivalence was);
- inconclusive: the fresh interval is unresolved at these seeds.

The result is kept in <results>/sweeps/<sweep>/confirm.json; `report` shows it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mirai_lab.analysis.collect import collect, done
from mirai_lab.analysis.stats import LEVEL, difference_to_baseline, verdict
from mirai_lab.config import RunConfig, config_from_dict
from mirai_lab.errors import UserError
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import CONFIRMATION_SEEDS, Plan, PlannedRun
from mirai_lab.experiments.sweep_verb import execute_plan, read_manifest
from mirai_lab.files.atomic import read_json, write_json
from mirai_lab.metrics import COMPARED, MARGINS
from mirai_lab.results_dir import CONFIRM, adaptive_path, sweep_dir
from mirai_lab.runs.identity import run_id_of

SETTLED = ("better", "worse", "equivalent")


def first_look(runs: pd.DataFrame, baseline: str, level: float) -> dict[str, dict[str, dict[str, Any]]]:
    """variant -> metric -> {mean, lo, hi, n, verdict} of the finished runs in `runs`."""
    finished = done(runs)
    base = finished[finished["variant"] == baseline]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in dict.fromkeys(finished["variant"]):
        if variant == baseline:
            continue
        rows = finished[finished["variant"] == variant]
        out[variant] = {}
        for metric, lower in COMPARED.items():
            diff = difference_to_baseline(rows, base, metric, level)
            if diff is None:
                continue
            out[variant][metric] = {"mean": diff.mean, "lo": diff.lo, "hi": diff.hi, "n": diff.n,
                                    "verdict": verdict(diff, lower, MARGINS.get(metric)).value}
    return out


def sweep_first_look(root: Path, sweep: str, baseline: str) -> tuple[float, dict[str, dict[str, dict[str, Any]]]]:
    """(level, first look) of a sweep: its rows judged at the level its verdicts were found at (the
    adaptive sweep's Bonferroni level, else 95%)."""
    adaptive = adaptive_path(root, sweep)
    level = float(read_json(adaptive)["level"]) if adaptive.is_file() else LEVEL
    return level, first_look(collect(root, [sweep])[0], baseline, level)


def resolved_rows(first: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The rows of a first look with a settled verdict on some compared metric."""
    return [v for v, metrics in first.items() if any(m["verdict"] in SETTLED for m in metrics.values())]


def outcome(original: str, fresh: str) -> str:
    if fresh == original:
        return "replicated"
    return "inconclusive" if fresh == "unresolved" else "not replicated"


def confirmation_plan(manifest: dict[str, Any], variants: list[str], seeds: list[int], name: str, *,
                      change: Callable[[RunConfig], RunConfig] | None = None, budget: str | None = None) -> Plan:
    """The baseline and `variants` on `seeds`, from the configs the sweep recorded (its first seed's),
    each passed through `change` when given (a robustness setting: experiments/robust.py), under
    `budget` (default: the sweep's).

    A row with a static teacher (a variant that reads another variant's finished checkpoint, such
    as table3's `@baseline`) reads, on each new seed, that variant's run of the same seed and
    setting: the teacher is part of the row, so it is made anew with it, never borrowed from the
    first look's seeds."""
    wanted = [manifest["baseline"], *variants]
    recorded = {}
    for variant in wanted:
        found = next((r for r in manifest["runs"] if r["variant"] == variant), None)
        if found is None or "config" not in found:
            raise UserError(f"sweep {manifest['name']!r} records no config for {variant!r}: plan it again with "
                            "`mirai-lab sweep` (its manifest predates recorded configs)")
        recorded[variant] = found
    teachers = {}  # variant -> the variant whose checkpoint it reads
    for variant, found in recorded.items():
        if found.get("depends_on"):
            teacher = next((r["variant"] for r in manifest["runs"] if r["run_id"] == found["depends_on"]), None)
            if teacher not in recorded or recorded[teacher].get("depends_on"):
                raise UserError(f"variant {variant!r} reads the checkpoint of {teacher or 'a run outside the sweep'!r}"
                                ", which is not the baseline or a row being trained again: confirm them together")
            teachers[variant] = teacher
    templates = {}
    for variant in wanted:
        templates[variant] = config_from_dict(copy.deepcopy(recorded[variant]["config"]))
        if change is not None:
            templates[variant] = change(templates[variant])
    made: dict[tuple[str, int], PlannedRun] = {}

    def planned(variant: str, seed: int) -> PlannedRun:
        """The run of `variant` on `seed`; a static row's reads its teacher's run of the same seed."""
        if (variant, seed) not in made:
            template = templates[variant]
            cfg = dataclasses.replace(template, train=dataclasses.replace(template.train, seed=seed))
            teacher_run = None
            if variant in teachers:
                teacher_run = planned(teachers[variant], seed).run_id
                cfg = dataclasses.replace(cfg, foresight=dataclasses.replace(cfg.foresight,
                                                                             static_checkpoint=teacher_run))
            made[variant, seed] = PlannedRun(run_id_of(cfg), variant, seed, recorded[variant].get("overrides", {}),
                                             cfg, teacher_run)
        return made[variant, seed]

    runs = [planned(variant, seed) for variant in wanted for seed in seeds]  # the sweep's row order
    return Plan(name, budget or manifest["budget"], seeds, list(manifest["axes"]), manifest["baseline"], runs,
                manifest.get("paper"), {})


def confirm_sweep(root: Path, sweep: str, *, seeds: int, workers: int, command: str, dry_run: bool = False,
                  as_json: bool = False) -> dict[str, Any]:
    """Train the fresh block (what is missing of it) and write confirm.json; returns it."""
    if not 3 <= seeds <= 1000:
        raise UserError(f"--seeds {seeds}: expected 3..1000 (a verdict needs 3 paired seeds)")
    manifest = read_manifest(root, sweep)
    baseline = manifest.get("baseline")
    if not baseline:
        raise UserError(f"sweep {sweep!r} has no baseline: nothing to confirm")
    level, first = sweep_first_look(root, sweep, baseline)
    resolved = resolved_rows(first)
    fresh_seeds = [CONFIRMATION_SEEDS + i for i in range(seeds)]
    record: dict[str, Any] = {"sweep": sweep, "first_level": level, "level": LEVEL, "seeds": fresh_seeds,
                              "command": command, "rows": {}}
    if not resolved:
        record["note"] = "no resolved row: nothing to confirm"
    else:
        name = f"{sweep}-confirm"
        plan = confirmation_plan(manifest, resolved, fresh_seeds, name)
        request = SweepRequest(spec=Path(sweep), command=command, workers=workers, dry_run=dry_run)
        out = execute_plan(plan, request, root, as_json=as_json)
        if dry_run:
            return {**record, "plan": out}
        fresh = first_look(collect(root, [name])[0], baseline, LEVEL)
        for variant in resolved:
            for metric, orig in first[variant].items():
                if orig["verdict"] not in SETTLED:
                    continue
                new = fresh.get(variant, {}).get(metric)
                record["rows"].setdefault(variant, {})[metric] = {
                    "first": orig, "fresh": new,
                    "outcome": outcome(orig["verdict"], new["verdict"]) if new else "inconclusive"}
    write_json(sweep_dir(root, sweep) / CONFIRM, record)
    return record
