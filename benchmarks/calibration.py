"""Signal-to-noise per CPU-minute of finished sweeps of the same experiment at different budgets.

    python benchmarks/calibration.py --results-dir results [--metric M --halfwidth H] SWEEP [SWEEP ...]

Per sweep and variant: the paired difference to the baseline on val_nll (mean, sd over seeds),
its signal-to-noise (|mean| / sd), and that squared per CPU-minute of one run (the median
`wall_s` of the sweep's runs, one thread each): the seeds a t-interval needs to resolve a
difference grow as (sd / |mean|)^2, so (|mean| / sd)^2 / minutes is the evidence one CPU-minute
buys. Per sweep: the pooled paired sd over all variants (the noise a row of that budget has,
whatever its effect) and the CPU-minutes a row needs for a 95% half-width of --halfwidth (0.02
nats of val_nll by default; give one in the metric's own units for another, e.g. 0.5 for
fid_domain).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from mirai_lab.analysis.collect import collect, done
from mirai_lab.analysis.stats import by_seed, paired_difference, seeds_needed
from mirai_lab.errors import UserError
from mirai_lab.files.atomic import read_json
from mirai_lab.results_dir import run_dir


def budget_of(results: Path, run_id: str) -> str:
    """steps / batch / lr / lr schedule of a run, from its config.json: the budget axes a
    calibration varies."""
    train = read_json(run_dir(results, run_id) / "config.json")["train"]
    return f"{train['steps']} / {train['batch_size']} / {train['lr']:g} / {train['lr_schedule']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--metric", default="val_nll")
    parser.add_argument("--halfwidth", type=float, default=0.02)
    args = parser.parse_args()
    if not (math.isfinite(args.halfwidth) and args.halfwidth > 0):
        parser.error(f"--halfwidth {args.halfwidth:g}: expected a finite number > 0")
    try:  # every sweep is read before anything is printed: a bad name gives one line, not half a table
        collected = {sweep: collect(args.results_dir, [sweep])[0] for sweep in args.sweeps}
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{args.metric}, paired against the baseline of the same seed\n")
    print("| sweep | steps / batch / lr / schedule | variant | n | mean Δ | sd Δ | |Δ|/sd | (|Δ|/sd)² per CPU-min |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    summary = []
    for sweep, runs in collected.items():
        finished = done(runs)
        minutes = float(np.median(finished["wall_s"].astype(float))) / 60
        budget = budget_of(args.results_dir, finished["run_id"].iloc[0])
        baseline = runs.loc[runs["is_baseline"], "variant"].iloc[0]
        base = by_seed(finished[finished["variant"] == baseline], args.metric)
        variances = []
        for variant in dict.fromkeys(finished["variant"]):
            if variant == baseline:
                continue
            diff = paired_difference(by_seed(finished[finished["variant"] == variant], args.metric), base)
            if diff is None or diff.n < 2:
                continue
            snr = abs(diff.mean) / diff.sd if diff.sd > 0 else math.inf
            variances.append(diff.sd ** 2)
            print(f"| {sweep} | {budget} | {variant} | {diff.n} | {diff.mean:+.4f} | {diff.sd:.4f} | {snr:.2f} | "
                  f"{snr ** 2 / minutes:.2f} |")
        pooled = math.sqrt(float(np.mean(variances)))
        need = seeds_needed(pooled, args.halfwidth)
        summary.append((sweep, budget, minutes, pooled, need, need * minutes if need else math.nan))
    h = f"±{args.halfwidth:g}"
    print(f"\n| sweep | steps / batch / lr / schedule | CPU-min per run | pooled sd Δ | seeds for {h} (95%) "
          f"| CPU-min per row for {h} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for sweep, budget, minutes, pooled, need, cost in summary:
        print(f"| {sweep} | {budget} | {minutes:.2f} | {pooled:.4f} | {need} | {2 * cost:.1f} |")
    print("\n(a row's CPU-minutes count its own runs and its baseline pairs: 2 x seeds x minutes per run)")


if __name__ == "__main__":
    main()
