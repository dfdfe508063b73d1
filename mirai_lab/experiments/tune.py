"""Optuna studies over the alignment coefficients (and optionally warm-up, schedule, block).

Each trial is an ordinary content-addressed run, so a trial that repeats a finished config
costs nothing. Intermediate values (the objective at every eval point) go to the pruner;
a pruned run keeps its checkpoint and is marked `pruned`. The best trial is exported as a
train spec under <results>/tuned/ (or --out) that `mirai-lab train` accepts as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mirai_lab.config import check_budget, check_used, flatten
from mirai_lab.errors import UserError
from mirai_lab.experiments.storage import check_storage_reachable, check_storage_url, open_storage
from mirai_lab.files.atomic import write_text
from mirai_lab.foresight.fit import configure
from mirai_lab.messages import show_progress
from mirai_lab.metrics import FID, STOPPING
from mirai_lab.results_dir import run_dir, safe_name, studies_dir, tuned_dir
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.lock import claim_run
from mirai_lab.runs.state import RunState, set_status
from mirai_lab.training.precision import auto_precision
from mirai_lab.training.trainer import Diverged, ProgressFn, Trainer

SOURCES = {
    "ema": {"foresight.source": "ema", "foresight.k": 3, "foresight.layout": "2d"},
    "bidirectional": {"foresight.source": "bidirectional", "foresight.encoder": "mtm", "foresight.k": 1},
    "mtp": {"foresight.injection": "mtp", "foresight.k": 3},
}
OBJECTIVES = STOPPING
PRUNERS = ("median", "hyperband", "none")
SCHEDULES = ("constant", "step", "cosine")  # the alignment schedules --search-schedule tries


@dataclass
class TuneOptions:
    source: str
    trials: int
    budget: str
    objective: str = FID
    pruner: str = "median"
    per_head: bool = False
    search_warmup: bool = False
    search_schedule: bool = False
    search_block: bool = False
    study: str | None = None  # None: tune-<source>-<budget>; an explicit name is checked, "" included
    storage: str | None = None
    base: dict[str, Any] | None = None

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise UserError(f"--source {self.source!r}: expected one of {', '.join(SOURCES)}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if self.pruner not in PRUNERS:
            raise UserError(f"--pruner {self.pruner!r}: expected one of {', '.join(PRUNERS)}")
        if self.trials < 1:
            raise UserError(f"--trials {self.trials}: expected >= 1")
        # everything a study needs is checked before its database is created
        check_budget(self.budget, "--budget")
        if self.study is not None:
            safe_name(self.study, "--study")  # it names a file under <results>/studies
        check_storage_url(self.storage)
        probe = configure(None, dict(SOURCES[self.source], **(self.base or {})), self.budget)
        # a trial reads what the search sets too: a --set step_at counts if a searched schedule is `step`
        searched = [configure(None, dict(SOURCES[self.source], **(self.base or {}), **{"foresight.schedule": s}),
                                 self.budget) for s in SCHEDULES] if self.search_schedule else []
        check_used(self.base or {}, [probe, *searched], "this study's trials")
        check_storage_reachable(self.storage)  # last: it may wait for a database


def suggest(trial: optuna.Trial, opts: TuneOptions, n_layer: int) -> dict[str, Any]:
    """The trial's overrides on top of the source's defaults."""
    over = dict(SOURCES[opts.source], **(opts.base or {}))
    k = int(over["foresight.k"])
    if opts.per_head and k > 1:
        over["foresight.head_coefs"] = [trial.suggest_float(f"coef_k{i}", 0.05, 8.0, log=True) for i in range(k)]
    else:
        over["foresight.coef"] = trial.suggest_float("coef", 0.05, 8.0, log=True)
    if opts.search_warmup:
        over["foresight.warmup_frac"] = trial.suggest_float("warmup_frac", 0.0, 0.4)
    if opts.search_schedule:
        schedule = trial.suggest_categorical("schedule", list(SCHEDULES))
        over["foresight.schedule"] = schedule
    if opts.search_block:
        over["foresight.student_block"] = trial.suggest_int("student_block", 1, n_layer - 1)
    return over


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(opts: TuneOptions, root: Path) -> optuna.Study:

    storage_url = opts.storage or f"sqlite:///{(studies_dir(root) / (opts.study + '.db')).resolve()}"
    if storage_url.startswith("sqlite:///"):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url, studies_dir(root) / f"{opts.study}.journal")
    return optuna.create_study(study_name=opts.study, storage=storage, direction="minimize",
                               pruner=make_pruner(opts.pruner), load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=0))


def objective_fn(opts: TuneOptions, root: Path, progress: ProgressFn | None = None) -> Any:
    """The study's objective; `progress(step, total, row)` sees every evaluation of the running trial."""
    probe = configure(None, dict(SOURCES[opts.source], **(opts.base or {})), opts.budget)
    if opts.objective == FID and not probe.eval.metrics:
        raise UserError("--objective fid_domain needs eval.metrics=true (or use --objective val_nll)")

    def objective(trial: optuna.Trial) -> float:
        over = suggest(trial, opts, probe.model.n_layer)
        cfg = configure(None, over, opts.budget)
        run_id = run_id_of(cfg)
        trial.set_user_attr("run_id", run_id)

        def report(step: int, total: int, row: dict[str, float]) -> None:
            if progress is not None:
                progress(step, total, row)
            if opts.objective in row:
                trial.report(row[opts.objective], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")

        path = run_dir(root, run_id)
        with claim_run(path) as done:  # one trainer per run on this machine (runs/lock.py)
            if done is not None:
                return float(done[opts.objective])
            try:
                final = Trainer(cfg, root, report).run()
            except optuna.TrialPruned:
                set_status(path, RunState.PRUNED)
                raise
            except Diverged:
                return float("inf")
        return float(final[opts.objective])

    return objective


def export_best(study: optuna.Study, opts: TuneOptions, out_dir: Path) -> Path:
    """Write the best trial as a train spec that `mirai-lab train` accepts.

    The spec holds what the user chose and what the study searched, nothing the budget
    resolved (a projector width, a block index), so it means the same under every budget:
    `train tuned.toml --budget quick` trains the tuned model at the quick length."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise UserError(f"study {study.study_name!r} has no completed trial to export")
    best = min(complete, key=lambda t: t.value)
    chosen = {**SOURCES[opts.source], **(opts.base or {}), **_params_to_overrides(best.params)}
    chosen.pop("budget", None)
    resolved = flatten(configure(None, chosen, opts.budget).to_dict())  # the values, coerced to their types
    lines = [f"# Best trial {best.number} of study {study.study_name!r}: {opts.objective} = {best.value:.6g}",
             f"# made by: mirai-lab tune --source {opts.source} --budget {opts.budget} --study {opts.study}",
             "# the source's settings, your --set values and the searched values only; the budget is a default",
             f'budget = "{opts.budget}"']
    sections: dict[str, list[str]] = {}
    for key in sorted(chosen):
        section, name = key.split(".", 1)
        sections.setdefault(section, []).append(f"{name} = {json.dumps(resolved[key])}")
    for section, entries in sections.items():
        lines += ["", f"[{section}]", *entries]
    path = out_dir / f"{opts.study}.toml"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _params_to_overrides(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    heads = sorted(k for k in params if k.startswith("coef_k"))
    if heads:
        out["foresight.head_coefs"] = [params[k] for k in heads]
    if "coef" in params:
        out["foresight.coef"] = params["coef"]
    for key in ("warmup_frac", "schedule", "student_block"):
        if key in params:
            out[f"foresight.{key}"] = params[key]
    return out


def resolve_study_precision(study: optuna.Study, opts: TuneOptions, root: Path) -> None:
    """train.precision = auto, resolved once per study (the study's record wins over a new
    measurement) and written into the trials' base overrides, so every trial's run id holds it."""
    reference = configure(None, dict(SOURCES[opts.source], **(opts.base or {})), opts.budget)
    if reference.train.precision != "auto":
        return
    chosen = study.user_attrs.get("precision") or auto_precision(reference, root)["precision"]
    study.set_user_attr("precision", chosen)
    opts.base = {**(opts.base or {}), "train.precision": chosen}


def run_tune(opts: TuneOptions, root: Path, out_dir: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the study's missing trials with a live bar (trials, the current trial's steps, the best
    value so far), then export the best; `out_dir` defaults to <results>/tuned."""
    opts.validate()
    opts.study = opts.study or f"tune-{opts.source}-{opts.budget}"
    study = open_study(opts, root)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resolve_study_precision(study, opts, root)
    done = len([t for t in study.trials if t.state.is_finished()])
    todo = max(0, opts.trials - done)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    shown = show_progress(quiet)
    with Progress(*columns, console=Console(stderr=True), disable=not shown, transient=True) as bar:
        trials = bar.add_task(f"study {opts.study}", total=todo, info=f"{done} trials already finished")
        steps = bar.add_task("trial", total=None, info="")

        def on_eval(step: int, total: int, row: dict[str, float]) -> None:
            shown = f"{opts.objective} {row[opts.objective]:.4g}" if opts.objective in row else ""
            bar.update(steps, completed=step, total=total, info=shown)

        def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            value = "" if trial.value is None else f" {trial.value:.4g}"
            best = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            bar.update(trials, advance=1, info=f"trial {trial.number} {trial.state.name.lower()}{value}; best "
                       + (f"{min(best):.4g}" if best else "none yet"))
            bar.update(steps, description=f"trial {trial.number + 1}", completed=0, info="")

        study.optimize(objective_fn(opts, root, on_eval), n_trials=todo, catch=(), callbacks=[on_trial])
    states = [t.state.name.lower() for t in study.trials]
    path = export_best(study, opts, out_dir or tuned_dir(root))
    return {"study": opts.study, "trials": len(states), "complete": states.count("complete"),
            "pruned": states.count("pruned"), "best_value": study.best_value, "best_params": study.best_params,
            "spec": str(path)}
