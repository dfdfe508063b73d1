"""Adaptive seeds: add seeds in rounds, only where they are needed, until every variant's
difference is resolved, shown equivalent, or out of reach.

A sweep is trained at `first` seeds, then `first + step`, ... up to `max_seeds` (the planned
looks). After each round every variant's difference to the baseline on the stopping metric
(val_nll by default) gets its verdict. The next round adds seeds to the variants still
unresolved whose plug-in seed count (analysis/stats.seeds_to_resolve at the observed spread)
is within `max_seeds`, and to the baseline they pair with; a settled variant keeps its
seeds, and so does a futile one (it would need more than the cap: its row says how many).
The loop stops when no variant needs another round, at the seed cap, or before a round that
would end past the wall-time cap; when the whole round would, the round is cut to the rows
closest to an answer (fewest seeds needed, then largest |difference|) that fit: the most
verdicts per CPU-minute (docs/statistics.md gives the measured case against largest-first).

Error rate over repeated looks: each look's interval is at level 1 - alpha / L for L planned
looks (Bonferroni over looks). By the union bound, the probability that any of a row's
intervals misses its true difference is at most alpha, whatever the dependence between the
looks (nested seeds) and whenever the row stops; so each row's "better"/"worse" is wrong with
probability <= alpha. Stopping a row early (settled or futile) never adds a verdict, so it
keeps the bound. The rate is per row, as a paper table states one interval per row; the
chance that some row of V is wrong is at most V * alpha (docs/statistics.md).

Every round is the ordinary sweep (experiments/sweep_verb.run_sweep) at more seeds under one
fixed sweep name, with `--variant-seeds` for the variants that stay where they are: runs are
content-addressed, so a new round trains only the new runs, and a killed adaptive sweep
resumes by running the same command (the looks are recomputed from the finished runs, which
gives the same rounds again; the time already spent is kept in adaptive.json).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirai_lab.analysis.collect import adaptive_path, collect, done, load_adaptive
from mirai_lab.analysis.stats import COMPARED, Verdict, difference_to_baseline, seeds_to_resolve, verdict
from mirai_lab.config import parse_set
from mirai_lab.errors import UserError
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import experiment_table, load_plan, positive_number
from mirai_lab.experiments.sweep import to_train
from mirai_lab.experiments.sweep_precision import sweep_precision
from mirai_lab.experiments.sweep_verb import run_sweep
from mirai_lab.experiments.timing_record import timed_call
from mirai_lab.files.atomic import write_json
from mirai_lab.metrics import REGISTRY, VAL_NLL
from mirai_lab.timing import part

ALPHA = 0.05
FIRST_MIN = 3  # a t-interval from 2 seeds has 1 degree of freedom: too wide to resolve anything
STEP = 2
DEFAULTS = {"margin": REGISTRY[VAL_NLL].margin, "max_seeds": 10, "max_minutes": 60.0}


@dataclass(frozen=True)
class Design:
    """The planned looks and the per-interval level that keeps each row's error rate over all of them."""

    first: int
    step: int
    max_seeds: int
    metric: str = VAL_NLL
    margin: float = DEFAULTS["margin"]
    alpha: float = ALPHA

    @property
    def looks(self) -> list[int]:
        looks = list(range(self.first, self.max_seeds + 1, self.step))
        return looks if looks[-1] == self.max_seeds else [*looks, self.max_seeds]

    @property
    def level(self) -> float:
        return 1.0 - self.alpha / len(self.looks)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "looks_planned": self.looks, "level": self.level}

    def matches(self, record: dict[str, Any]) -> bool:
        """Whether a recorded adaptive.json was made with this design."""
        return all(record.get(key) == value for key, value in self.to_json().items())


@dataclass(frozen=True)
class AdaptiveOptions:
    """margin, seed cap and wall-time cap; first = seeds of the first look; from_spec: every value
    that shapes the looks is the spec's own (then the sweep keeps the spec's name)."""

    margin: float
    max_seeds: int
    max_minutes: float
    first: int
    from_spec: bool


def check_adaptive_values(margin: float | None, max_seeds: int | None, max_minutes: float | None) -> None:
    """The command line's adaptive values, checked whether or not the sweep is adaptive: a value
    that is ignored today must not be a bad one that waits for the day --adaptive is added."""
    for key, value, kind in (("margin", margin, float), ("max_seeds", max_seeds, int),
                             ("max_minutes", max_minutes, float)):
        if value is not None:
            positive_number(value, f"--{key.replace('_', '-')}: {key}={value!r}", kind)


def adaptive_options(spec_path: Path, *, adaptive: bool | None, margin: float | None, max_seeds: int | None,
                     max_minutes: float | None, seeds: int | None) -> AdaptiveOptions | None:
    """The adaptive settings of a sweep: command-line options over the spec's [experiment] keys
    (adaptive, margin, max_seeds, max_minutes) over DEFAULTS; None for a fixed-seed sweep.

    An explicit seed count without an explicit --adaptive asks for exactly those seeds: fixed.
    """
    check_adaptive_values(margin, max_seeds, max_minutes)
    exp = experiment_table(spec_path)
    on = exp.get("adaptive", False) if adaptive is None else adaptive
    if adaptive is None and seeds is not None:
        return None
    if not isinstance(on, bool):
        raise UserError(f"{spec_path}: adaptive={on!r}: expected true or false")
    if not on:
        return None
    values = {key: exp.get(key, default) for key, default in DEFAULTS.items()}
    values.update({k: v for k, v in (("margin", margin), ("max_seeds", max_seeds), ("max_minutes", max_minutes))
                   if v is not None})
    where = "adaptive sweep" if adaptive else str(spec_path)
    spec_seeds = exp.get("seeds", 1)
    start = seeds if seeds is not None else (spec_seeds if isinstance(spec_seeds, int) else len(spec_seeds))

    def pick(key: str, kind: type) -> Any:
        return positive_number(values[key], f"{where}: {key}={values[key]!r}", kind)

    opts = AdaptiveOptions(margin=pick("margin", float), max_seeds=pick("max_seeds", int),
                           max_minutes=pick("max_minutes", float),
                           first=max(FIRST_MIN, int(start)),
                           from_spec=adaptive is None and margin is None and max_seeds is None)
    if opts.first > opts.max_seeds:
        raise UserError(f"{where}: max_seeds={opts.max_seeds}: expected >= {opts.first} (the first look)")
    return opts


def finished_runs(root: Path, sweep: str) -> pd.DataFrame:
    """The sweep's finished runs, read once per round for its look and the next round's time estimate."""
    return done(collect(root, [sweep])[0])


def look(finished: pd.DataFrame, variants: list[str], design: Design, baseline: str,
         seeds: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each variant's difference on the design's metric at its level, from the finished runs of its
    first seeds[variant] seeds (the look's own: a resumed sweep's manifest may list later rounds too)."""
    finished = finished[finished["seed"] < finished["variant"].map(seeds).fillna(0)]
    base = finished[finished["variant"] == baseline]
    rows = {}
    for variant in variants:
        if variant == baseline:
            continue
        diff = difference_to_baseline(finished[finished["variant"] == variant], base, design.metric, design.level)
        found = verdict(diff, COMPARED[design.metric], design.margin)
        need = seeds_to_resolve(diff, design.margin) if found is Verdict.UNRESOLVED else None
        rows[variant] = {"n": diff.n if diff else 0, "mean": diff.mean if diff else None,
                         "lo": diff.lo if diff and diff.n > 1 else None, "hi": diff.hi if diff and diff.n > 1 else None,
                         "verdict": found.value, "seeds_needed": need}
    return rows


def median_wall_s(finished: pd.DataFrame) -> float | None:
    """The per-run cost a round is planned with under the time cap (the median: robust to a run
    slowed by a neighbour)."""
    walls = np.asarray(finished.get("wall_s", []), dtype=float)
    walls = walls[np.isfinite(walls)]
    return float(np.median(walls)) if walls.size else None


def needs_more(row: dict[str, Any], max_seeds: int) -> bool:
    """Whether a row gets the next round's seeds: unresolved, and resolvable within the cap at
    its observed spread (a row whose spread is unknown, n < 2, always gets them)."""
    if Verdict(row["verdict"]).settled:
        return False
    need = row["seeds_needed"]
    return row["n"] < 2 or (need is not None and need <= max_seeds)


def run_adaptive(request: SweepRequest, root: Path, options: AdaptiveOptions, *, as_json: bool = False,
                 metric: str = VAL_NLL) -> dict[str, Any]:
    """Rounds of `run_sweep` at growing seed counts under one sweep name; returns the summary
    (name, looks made, last verdicts, why it stopped), also kept in <sweep>/adaptive.json.

    Each round is `request` at that round's seeds, under the sweep's name, with the variants that
    keep their seeds given as variant_seeds; its manifest records the command the user typed.
    """
    with timed_call(request.command), part("plan"):  # the rounds' time is the workers' (timing_record.py)
        return _run_adaptive(request, root, options, as_json, metric)


def _run_adaptive(request: SweepRequest, root: Path, options: AdaptiveOptions, as_json: bool,
                  metric: str) -> dict[str, Any]:
    spec_path, budget, workers, name = request.spec, request.budget, request.workers, request.name
    overrides = parse_set(list(request.set_items))
    plan = load_plan(spec_path, budget=budget, overrides=overrides, resolve_auto=sweep_precision(root, quiet=True))
    if plan.baseline is None:
        raise UserError(f"{spec_path}: adaptive seeds compare variants with a baseline: set baseline in [experiment]")
    variants = list(dict.fromkeys(r.variant for r in plan.runs))
    design = Design(options.first, STEP, options.max_seeds, metric, options.margin)
    sweep = name or (plan.name if options.from_spec else f"{plan.name}-adaptive")
    path = adaptive_path(root, sweep)
    record = load_adaptive(root, sweep)
    if record and not design.matches(record):
        raise UserError(f"adaptive sweep {sweep!r} was started with looks at {record.get('looks_planned')} seeds, "
                        f"margin {record.get('margin')}, level {record.get('level')}; run it with the same "
                        "options, or give another --name")
    spent = float((record or {}).get("elapsed_s", 0.0))
    # a resumed sweep replays the rounds it recorded (which rows each grew), so that time already
    # spent on later rounds does not change an earlier round's choice
    recorded = {lk["n"]: lk["grown"] for lk in (record or {}).get("looks", []) if "grown" in lk}
    t0 = time.monotonic()
    looks: list[dict[str, Any]] = []
    seeds = {v: 0 for v in variants}  # seeds each variant has been given so far
    trained = 0
    stopped = f"seed cap ({design.max_seeds} seeds) reached"

    def save(reason: str | None) -> None:
        write_json(path, {**design.to_json(), "looks": looks, "stopped": reason,
                          "elapsed_s": round(spent + time.monotonic() - t0, 1)})

    def round_for(chosen: list[str], n: int) -> tuple[dict[str, int], dict[str, int], int]:
        """Seeds per variant, the variants below n, and the runs still to train, if `chosen` get n seeds."""
        target = {**seeds, plan.baseline: n, **dict.fromkeys(chosen, n)}
        fewer = {v: k for v, k in target.items() if k < n}
        round_plan = load_plan(spec_path, budget=budget, seeds=n, overrides=overrides, name=sweep,
                               variant_seeds=fewer or None, resolve_auto=sweep_precision(root, quiet=True))
        return target, fewer, len(to_train(round_plan, root, retry_failed=False))

    active = [v for v in variants if v != plan.baseline]
    finished = None  # the finished runs at the last look
    for n in design.looks:
        if n in recorded:
            active = [v for v in recorded[n] if v in variants]
        wall = median_wall_s(finished) if finished is not None and n not in recorded else None
        if wall is None:
            candidates = [active]
        else:  # under the time cap, the rows closest to an answer go first: fewest seeds needed, then largest |mean|
            rows = looks[-1]["rows"]
            ranked = sorted(active, key=lambda v: (rows[v]["seeds_needed"] or math.inf, -abs(rows[v]["mean"] or 0.0)))
            candidates = [ranked[:k] for k in range(len(ranked), 0, -1)]
            elapsed = spent + time.monotonic() - t0
        for chosen in candidates:
            target, fewer, pending = round_for(chosen, n)
            more_s = pending * wall / workers if wall is not None else 0.0
            if wall is None or elapsed + more_s <= 60 * options.max_minutes:
                active = chosen
                break
        else:
            stopped = (f"time cap: {n} seeds for even 1 of {len(active)} unresolved variant(s) would take about "
                       f"{more_s / 60:.0f} more minutes after {elapsed / 60:.0f} of {options.max_minutes:g}")
            break
        if pending or n not in recorded:  # a replayed, finished round keeps the manifest of the rounds after it
            out = run_sweep(replace(request, seeds=n, name=sweep, variant_seeds=fewer or None), root,
                            as_json=as_json)
            trained += int((out or {}).get("trained", 0))
        seeds = target
        finished = finished_runs(root, sweep)
        looks.append({"n": n, "seeds": dict(seeds), "grown": active,
                      "rows": look(finished, variants, design, plan.baseline, seeds)})
        save(None)
        active = [v for v, row in looks[-1]["rows"].items() if needs_more(row, design.max_seeds)]
        if not active:
            stopped = (f"every {metric} difference resolved, equivalent, or out of reach of {design.max_seeds} "
                       f"seeds at {n} seeds")
            break
    save(stopped)
    last = looks[-1]["rows"] if looks else {}
    return {"name": sweep, "budget": plan.budget, "metric": metric, "looks": [lk["n"] for lk in looks],
            "level": design.level, "stopped": stopped,
            "trained": trained, "seeds": seeds,
            "verdicts": {v: r["verdict"] for v, r in last.items()},
            "seeds_needed": {v: r["seeds_needed"] for v, r in last.items() if r["seeds_needed"] is not None}}
