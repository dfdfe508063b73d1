"""Optuna studies over the alignment coefficients (and optionally warm-up, schedule, block).

Each trial is an ordinary content-addressed run, so a trial that repeats a finished config
costs nothing. Intermediate values (the objective at every eval point) go to the pruner;
a pruned run keeps its checkpoint and is marked `pruned`. The best trial is exported as a
train spec under experiments/tuned/ that `mirai-lab train` accepts as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mirai_lab.config import RunConfig, build_config, flatten
from mirai_lab.errors import UserError
from mirai_lab.experiments.queue import open_storage
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.state import RunState, run_state, set_status
from mirai_lab.runs.store import run_dir, write_text
from mirai_lab.training.trainer import Diverged, Trainer

SOURCES = {
    "ema": {"foresight.source": "ema", "foresight.k": 3, "foresight.layout": "2d"},
    "bidirectional": {"foresight.source": "bidirectional", "foresight.encoder": "mtm", "foresight.k": 1},
    "mtp": {"foresight.injection": "mtp", "foresight.k": 3},
}
OBJECTIVES = ("fid_domain", "val_nll")
PRUNERS = ("median", "hyperband", "none")


@dataclass
class TuneOptions:
    source: str
    trials: int
    budget: str
    objective: str = "fid_domain"
    pruner: str = "median"
    per_head: bool = False
    search_warmup: bool = False
    search_schedule: bool = False
    search_block: bool = False
    study: str = ""
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
        schedule = trial.suggest_categorical("schedule", ["constant", "step", "cosine"])
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

    storage_url = opts.storage or f"sqlite:///{(root / 'studies' / (opts.study + '.db')).resolve()}"
    if storage_url.startswith("sqlite:///"):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url, root / "studies" / f"{opts.study}.journal")
    return optuna.create_study(study_name=opts.study, storage=storage, direction="minimize",
                               pruner=make_pruner(opts.pruner), load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=0))


def objective_fn(opts: TuneOptions, root: Path) -> Any:
    probe = build_config(None, dict(SOURCES[opts.source], **(opts.base or {})), opts.budget)
    if opts.objective == "fid_domain" and not probe.eval.metrics:
        raise UserError("--objective fid_domain needs eval.metrics=true (or use --objective val_nll)")

    def objective(trial: optuna.Trial) -> float:
        over = suggest(trial, opts, probe.model.n_layer)
        cfg = build_config(None, over, opts.budget)
        run_id = run_id_of(cfg)
        trial.set_user_attr("run_id", run_id)

        def report(step: int, total: int, row: dict[str, float]) -> None:
            if opts.objective in row:
                trial.report(row[opts.objective], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")

        path = run_dir(root, run_id)
        if run_state(path) is RunState.DONE:
            return float(json.loads((path / "final.json").read_text())[opts.objective])
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
    """Write the best trial as a train spec (TOML tables) that `mirai-lab train` accepts."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise UserError(f"study {study.study_name!r} has no completed trial to export")
    best = min(complete, key=lambda t: t.value)
    over = dict(SOURCES[opts.source], **(opts.base or {}))
    over.update(_params_to_overrides(best.params))
    cfg: RunConfig = build_config(None, over, opts.budget)
    lines = [f"# Best trial {best.number} of study {study.study_name!r}: {opts.objective} = {best.value:.6g}",
             f"# made by: mirai-lab tune --source {opts.source} --budget {opts.budget} --study {opts.study}",
             f'budget = "{opts.budget}"']
    chosen, defaults = flatten(cfg.to_dict()), flatten(build_config(None, {}, opts.budget).to_dict())
    sections: dict[str, list[str]] = {}
    for key, value in chosen.items():
        if "." in key and defaults.get(key) != value:
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"{name} = {json.dumps(value)}")
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


def run_tune(opts: TuneOptions, root: Path, out_dir: Path) -> dict[str, Any]:
    opts.validate()
    opts.study = opts.study or f"tune-{opts.source}-{opts.budget}"
    study = open_study(opts, root)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = len([t for t in study.trials if t.state.is_finished()])
    study.optimize(objective_fn(opts, root), n_trials=max(0, opts.trials - done), catch=())
    states = [t.state.name.lower() for t in study.trials]
    path = export_best(study, opts, out_dir)
    return {"study": opts.study, "trials": len(states), "complete": states.count("complete"),
            "pruned": states.count("pruned"), "best_value": study.best_value, "best_params": study.best_params,
            "spec": str(path)}
