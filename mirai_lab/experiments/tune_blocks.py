"""The blocks of runs a tuning study trains besides its trials, and what is read back from them.

Three blocks, each a plain plan of content-addressed runs trained by the sweep machinery
(sweep_verb.execute_plan: in this process, or `--workers` at once) under a sweep name made from the
study's, so `mirai-lab report <study>-fresh` tabulates the confirmation like any sweep:

- `<study>-baseline`: the baseline (foresight off) on the selection seeds, trained once before the
  first trial and paired with every trial;
- `<study>-rescore`: the baseline and the top trials on the selection seeds plus RESCORE_SEEDS more
  (only the new seeds train: the rest are the trials' own runs);
- `<study>-fresh`: the baseline, the default coefficient and the winner on the confirmation block
  (spec.CONFIRMATION_SEEDS on), seeds no selection ever saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mirai_lab.analysis.stats import LEVEL, paired_difference, verdict
from mirai_lab.errors import CorruptFile
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import Plan, PlannedRun
from mirai_lab.experiments.sweep_verb import execute_plan
from mirai_lab.foresight.fit import configure
from mirai_lab.metrics import REGISTRY, VAL_NLL
from mirai_lab.results_dir import CURVE, run_dir
from mirai_lab.runs.curve import Curve
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.state import done_record

BASELINE, DEFAULT, TUNED = "baseline", "default", "tuned"
BLOCKS = ("baseline", "rescore", "fresh")  # the suffixes of the study's block sweeps


def block_name(study: str, block: str) -> str:
    return f"{study}-{block}"


def block_plan(name: str, budget: str, variants: Mapping[str, dict[str, Any]], seeds: Sequence[int]) -> Plan:
    """Every variant (name -> its config overrides) on every seed, as a sweep plan with a baseline row."""
    runs = []
    for variant, overrides in variants.items():
        for seed in seeds:
            cfg = configure(None, {**overrides, "train.seed": seed}, budget)
            runs.append(PlannedRun(run_id_of(cfg), variant, seed, dict(overrides), cfg))
    return Plan(name, budget, list(seeds), ["variant"], BASELINE, runs, None, {})


def train_block(plan: Plan, root: Path, *, workers: int, command: str, quiet: bool) -> None:
    """Train what is missing of the block (a run already done, by a trial or an earlier study, is reused).

    A block's sweep name belongs to its study, and the block is planned again from the study
    each time (a study with more trials rescores other top trials), so its manifest is
    rewritten rather than guarded like a user's sweep name (sweep_verb.check_name_free)."""
    execute_plan(plan, SweepRequest(spec=Path(plan.name), command=command, workers=workers), root, as_json=quiet)


def finals(plan: Plan, root: Path, variant: str, metric: str) -> dict[int, float]:
    """{seed: final metric} of the variant's done runs (a failed or damaged run gives no value)."""
    out = {}
    for run in plan.runs:
        if run.variant != variant:
            continue
        final = done_record(run_dir(root, run.run_id))
        if final is not None and metric in final:
            out[run.seed] = float(final[metric])
    return out


def paired_mean(variant: Mapping[int, float], baseline: Mapping[int, float], seeds: Sequence[int]) -> float:
    """Mean over `seeds` of variant - baseline, paired by seed; inf unless both sides have a finite
    value on every seed (a run that diverged or failed counts against the variant, never as a
    smaller sample)."""
    if not all(math.isfinite(side.get(s, math.nan)) for s in seeds for side in (variant, baseline)):
        return math.inf
    diff = paired_difference({s: variant[s] for s in seeds}, {s: baseline[s] for s in seeds})
    assert diff is not None and diff.n == len(seeds)
    return diff.mean


def val_nll_curve(root: Path, run_id: str) -> dict[int, float]:
    """{step: val_nll} of a run's curve; empty when it cannot be read (that seed then prunes nothing)."""
    try:
        rows = Curve.load(run_dir(root, run_id) / CURVE, run_id).rows
    except CorruptFile:
        return {}
    return {step: value for _, step, _, _, metric, value in rows if metric == VAL_NLL}


def comparison(variant: Mapping[int, float], reference: Mapping[int, float], metric: str) -> dict[str, Any] | None:
    """variant - reference on their common seeds: mean, 95% interval, n and verdict (analysis/stats.py);
    None when fewer than one seed pairs."""
    diff = paired_difference(variant, reference, LEVEL)
    if diff is None or not diff.paired:
        return None
    m = REGISTRY[metric]
    return {"mean": diff.mean, "lo": diff.lo, "hi": diff.hi, "n": diff.n, "level": LEVEL,
            "verdict": verdict(diff, bool(m.lower_is_better), m.margin).value}


def comparison_line(label: str, reference: str, metric: str, result: dict[str, Any] | None) -> str:
    """`tuned coef 0.7 vs default 2.0: Δ val_nll -0.012 [-0.031, +0.007], n=5, unresolved`."""
    if result is None:
        return f"{label} vs {reference}: no paired seeds (their runs failed)"
    return (f"{label} vs {reference}: Δ {metric} {result['mean']:+.4g} [{result['lo']:+.4g}, {result['hi']:+.4g}], "
            f"n={result['n']}, {result['verdict']}")
