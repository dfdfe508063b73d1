"""`mirai-lab tune`: the study from its baseline block to its confirmed, exported winner (tune.py says
why each step is there), and the plan a dry run prints instead."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mirai_lab.config import RunConfig
from mirai_lab.errors import UserError
from mirai_lab.experiments.dry_run import seconds_per_run
from mirai_lab.experiments.spec import CONFIRMATION_SEEDS
from mirai_lab.experiments.tune import (
    DEFAULT_COEF,
    RESCORE_SEEDS,
    PairedObjective,
    TuneOptions,
    baseline_overrides,
    check_settings,
    default_params,
    describe,
    open_study,
    resolve_study_precision,
    settings,
    storage_url,
    trial_overrides,
)
from mirai_lab.experiments.tune_blocks import (
    BASELINE,
    DEFAULT,
    TUNED,
    block_name,
    block_plan,
    comparison,
    comparison_line,
    finals,
    paired_mean,
    train_block,
    val_nll_curve,
)
from mirai_lab.experiments.tune_export import export
from mirai_lab.foresight.fit import configure
from mirai_lab.messages import say, show_progress
from mirai_lab.metrics import VAL_NLL
from mirai_lab.results_dir import run_dir, tuned_dir
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.state import RunState, done_record, run_state

COMPLETE = optuna.trial.TrialState.COMPLETE


def run_tune(opts: TuneOptions, root: Path, out_dir: Path | None = None, *, quiet: bool = False,
             command: str = "mirai-lab tune", dry_run: bool = False) -> dict[str, Any]:
    """Run the study's missing trials, rescore the top ones, confirm the winner on fresh seeds and
    export it under `out_dir` (default <results>/tuned/<study>); returns the record. A dry run
    prints the plan and writes nothing."""
    reference = opts.validate()
    if dry_run:
        return plan_study(opts, root, reference, out_dir, quiet=quiet)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(opts, root)
    check_settings(study, opts)
    user_set = dict(opts.base or {})
    resolve_study_precision(study, opts, root, reference)
    for key, value in settings(opts).items():
        study.set_user_attr(key, user_set if key == "set" else value)
    baseline, curves = train_baseline(opts, root, command, quiet)
    anchor = default_params(opts, reference)
    if not study.trials:
        study.enqueue_trial(anchor)
    _optimize(study, opts, PairedObjective(opts, root, baseline, curves, reference.model.n_layer), quiet)
    winner, rescored = select_winner(study, opts, root, command, quiet)
    confirmation = confirm_winner(opts, root, winner, anchor, command, quiet)
    study.set_user_attr("winner", {"trial": winner.number, "params": winner.params})
    study.set_user_attr("confirmation", {k: v for k, v in confirmation.items() if k != "lines"})
    states = [t.state.name.lower() for t in study.trials]
    record = {
        "study": study.study_name, "command": command,
        "storage": opts.storage or f"studies/{study.study_name}.db in the results directory",
        "settings": {**settings(opts), "set": user_set}, "precision": study.user_attrs.get("precision"),
        "baseline": {str(s): float(f[opts.objective]) for s, f in baseline.items()},
        "default_params": anchor,
        "trials": [{"number": t.number, "state": t.state.name.lower(), "params": t.params,
                    "value": t.value if t.value is None or math.isfinite(t.value) else None,
                    "diverged": t.value is not None and not math.isfinite(t.value),
                    "differences": t.user_attrs.get("differences"), "run_ids": t.user_attrs.get("run_ids")}
                   for t in study.trials],
        "rescore": rescored,
        "winner": {"trial": winner.number, "params": winner.params, "value": winner.value,
                   "pooled": rescored.get("pooled", {}).get(str(winner.number))},
        "confirmation": confirmation,
        "counts": {"trials": len(states), "complete": states.count("complete"), "pruned": states.count("pruned")},
    }
    spec, path = export(out_dir or tuned_dir(root) / study.study_name, opts, record)
    return {**record, "spec": str(spec), "record": str(path)}


def train_baseline(opts: TuneOptions, root: Path, command: str, quiet: bool
                   ) -> tuple[dict[int, dict[str, Any]], dict[int, dict[int, float]]]:
    """The baseline block, trained once and shared by every trial: final.json and val_nll curve per seed."""
    plan = block_plan(block_name(str(opts.study), "baseline"), opts.budget, {BASELINE: baseline_overrides(opts)},
                      range(opts.seeds))
    train_block(plan, root, workers=opts.workers, command=command, quiet=quiet)
    records, curves = {}, {}
    for run in plan.runs:
        final = done_record(run_dir(root, run.run_id))
        if final is None or opts.objective not in final or VAL_NLL not in final:
            raise UserError(f"the baseline run {run.run_id} (seed {run.seed}) did not finish (see its status.json): "
                            "every trial is paired with it")
        records[run.seed] = final
        curves[run.seed] = val_nll_curve(root, run.run_id)
    return records, curves


def _optimize(study: optuna.Study, opts: TuneOptions, objective: PairedObjective, quiet: bool) -> None:
    """The study's missing trials, with a live bar on a terminal (trials; the current trial's seed and
    steps; the best value so far)."""
    done = len([t for t in study.trials if t.state.is_finished()])
    todo = max(0, opts.trials - done)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress(quiet), transient=True) as bar:
        trials = bar.add_task(f"study {opts.study}", total=todo, info=f"{done} trials already finished")
        steps = bar.add_task("trial", total=None, info="")

        def on_eval(seed: int, step: int, total: int, row: dict[str, float]) -> None:
            bar.update(steps, completed=step, total=total, info=f"seed {seed} val_nll {row.get(VAL_NLL, math.nan):.4g}")

        def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            value = "" if trial.value is None else f" {trial.value:+.4g}"
            best = [t.value for t in study.trials if t.state == COMPLETE]
            bar.update(trials, advance=1, info=f"trial {trial.number} {trial.state.name.lower()}{value}; best "
                       + (f"{min(best):+.4g}" if best else "none yet"))
            bar.update(steps, description=f"trial {trial.number + 1}", completed=0, info="")

        objective.progress = on_eval
        study.optimize(objective, n_trials=todo, catch=(), callbacks=[on_trial])


def select_winner(study: optuna.Study, opts: TuneOptions, root: Path, command: str, quiet: bool
                  ) -> tuple[optuna.trial.FrozenTrial, dict[str, Any]]:
    """The top `--rescore` trials (distinct parameters) on RESCORE_SEEDS more seeds; the winner is the
    best on all selection seeds pooled (without rescoring: the best trial)."""
    ranked = sorted((t for t in study.trials if t.state == COMPLETE and math.isfinite(t.value)),
                    key=lambda t: (t.value, t.number))
    if not ranked:
        raise UserError(f"study {study.study_name!r} has no completed trial with a finite value: nothing to confirm")
    top: dict[str, optuna.trial.FrozenTrial] = {}
    for trial in ranked:
        top.setdefault(repr(sorted(trial.params.items())), trial)
    chosen = list(top.values())[:opts.rescore]
    if not chosen:
        return ranked[0], {}
    seeds = list(range(opts.seeds + RESCORE_SEEDS))
    variants = {BASELINE: baseline_overrides(opts),
                **{f"trial-{t.number}": trial_overrides(opts, t.params) for t in chosen}}
    plan = block_plan(block_name(study.study_name, "rescore"), opts.budget, variants, seeds)
    train_block(plan, root, workers=opts.workers, command=command, quiet=quiet)
    base = finals(plan, root, BASELINE, opts.objective)
    pooled = {t.number: paired_mean(finals(plan, root, f"trial-{t.number}", opts.objective), base, seeds)
              for t in chosen}
    winner = min(chosen, key=lambda t: (pooled[t.number], t.value, t.number))
    if not math.isfinite(pooled[winner.number]):
        raise UserError(f"no rescored trial finished every seed of sweep {plan.name!r} (nor did the baseline, or "
                        "every rescored run failed): see the runs' status.json")
    return winner, {"sweep": plan.name, "seeds": seeds, "trials": [t.number for t in chosen],
                    "pooled": {str(n): v for n, v in pooled.items()}}


def confirm_winner(opts: TuneOptions, root: Path, winner: optuna.trial.FrozenTrial, anchor: dict[str, Any],
                   command: str, quiet: bool) -> dict[str, Any]:
    """The winner against the default and the baseline on the confirmation block (fresh seeds)."""
    seeds = [CONFIRMATION_SEEDS + i for i in range(opts.confirm_seeds)]
    default, tuned = trial_overrides(opts, anchor), trial_overrides(opts, winner.params)
    same = _run_id(default, opts) == _run_id(tuned, opts)
    variants = {BASELINE: baseline_overrides(opts), DEFAULT: default, **({} if same else {TUNED: tuned})}
    plan = block_plan(block_name(str(opts.study), "fresh"), opts.budget, variants, seeds)
    train_block(plan, root, workers=opts.workers, command=command, quiet=quiet)
    values = {v: finals(plan, root, v, opts.objective) for v in variants}
    metric, label = opts.objective, f"tuned {describe(winner.params)}"
    if same:
        vs_default = None
        vs_baseline = comparison(values[DEFAULT], values[BASELINE], metric)
        lines = [f"the winner (trial {winner.number}) is the default coef {DEFAULT_COEF}: no tuned-vs-default "
                 "comparison",
                 comparison_line(f"default coef {DEFAULT_COEF}", "baseline", metric, vs_baseline)]
    else:
        vs_default = comparison(values[TUNED], values[DEFAULT], metric)
        vs_baseline = comparison(values[TUNED], values[BASELINE], metric)
        lines = [comparison_line(label, f"default {DEFAULT_COEF}", metric, vs_default),
                 comparison_line(label, "baseline", metric, vs_baseline)]
    return {"sweep": plan.name, "seeds": seeds, "metric": metric, "default_is_winner": same,
            "vs_default": vs_default, "vs_baseline": vs_baseline, "lines": lines}


def _run_id(overrides: dict[str, Any], opts: TuneOptions) -> str:
    return run_id_of(configure(None, {**overrides, "train.seed": 0}, opts.budget))


def plan_study(opts: TuneOptions, root: Path, reference: RunConfig, out_dir: Path | None, *,
               quiet: bool) -> dict[str, Any]:
    """What the study would train, and about how long it would take; nothing is opened or written."""
    n, c = opts.seeds, opts.confirm_seeds
    rescored = min(opts.rescore, opts.trials)
    auto = reference.train.precision == "auto"
    # with precision auto the ids are decided when the study starts: fp32 stands in for the count and the time
    base_over = {**baseline_overrides(opts), **({"train.precision": "fp32"} if auto else {})}
    plan = block_plan(block_name(str(opts.study), "baseline"), opts.budget, {BASELINE: base_over}, range(n))
    done = sum(run_state(run_dir(root, r.run_id)) is RunState.DONE for r in plan.runs)
    runs = {"baseline": n - done, "trials": opts.trials * n,
            "rescore": (rescored + 1) * RESCORE_SEEDS if rescored else 0, "confirmation": 3 * c}
    seconds, source = seconds_per_run(plan, root)
    blocks = runs["baseline"] + runs["rescore"] + runs["confirmation"]
    minutes = None if seconds is None else round((runs["trials"] + blocks / opts.workers) * seconds / 60, 1)
    fresh = [CONFIRMATION_SEEDS, CONFIRMATION_SEEDS + c - 1]
    folder = out_dir or tuned_dir(root) / str(opts.study)
    out = {
        "study": opts.study, "storage": storage_url(opts, root), "settings": settings(opts),
        "default_params": default_params(opts, reference), "runs_at_most": runs,
        "sweeps": {b: block_name(str(opts.study), b) for b in ("baseline", "rescore", "fresh")},
        "export": str(folder), "estimate": {"seconds_per_run": seconds, "source": source, "minutes": minutes,
                                            "workers": opts.workers},
        "precision": "auto: decided when the study starts" if auto else reference.train.precision,
    }
    if not quiet:
        sel = f"seeds 0-{n - 1}" if n > 1 else "seed 0"
        say(f"tune dry run: study {opts.study}, budget {opts.budget}, source {opts.source}; storage {out['storage']}")
        say(f"objective: mean over {sel} of (trial - baseline) final {opts.objective}, paired by seed; lower is "
            "better")
        say(f"baseline: {n} run(s) on {sel} (sweep {out['sweeps']['baseline']}), {done} already done")
        say(f"trials: {opts.trials} in all (trials already in the study count), the first the default coef "
            f"{DEFAULT_COEF}; {n} seed(s) each, one run at a time: at most {runs['trials']} runs; pruner "
            f"{opts.pruner}" + (" on the running paired val_nll difference" if opts.pruner != "none" else ""))
        say(f"rescoring: the top {rescored} trial(s) and the baseline on seeds {n}-{n + RESCORE_SEEDS - 1} added "
            f"(sweep {out['sweeps']['rescore']}): at most {runs['rescore']} runs; the winner is the best on seeds "
            f"0-{n + RESCORE_SEEDS - 1} pooled" if rescored else "rescoring: none (--rescore 0): the winner is the "
            "best trial")
        say(f"confirmation: baseline, default coef {DEFAULT_COEF} and the winner on fresh seeds {fresh[0]}-{fresh[1]} "
            f"(sweep {out['sweeps']['fresh']}), paired 95% intervals: at most {runs['confirmation']} runs")
        say(f"export: {folder} (an experiment spec with the baseline, default and tuned rows, and tune.json)")
        total = sum(runs.values())
        say(f"time: at most {total} runs" + ("" if minutes is None else
            f" x {seconds:.0f} s per run ({source}), trials one at a time, blocks on {opts.workers} worker(s): "
            f"about {minutes:g} min") + "; dry run: nothing trained or written")
    return out
