"""Optuna studies over the alignment coefficients (and optionally warm-up, schedule, block), whose
winner is confirmed on fresh seeds before it is exported.

- **Objective.** A trial trains seeds 0..N-1 (`--seeds`, default 2) and scores the paired difference
  to the baseline (foresight off) on the same seeds: the mean over the seeds of (trial - baseline)
  final metric (val_nll unless --objective fid_domain). At this scale the seed-to-seed spread is
  as large as the effects, so a raw final value ranks trials by the luck of their seeds; the
  paired difference cancels what a seed gives both runs. The baseline runs are ordinary
  content-addressed runs, trained once before the first trial and shared by every trial
  (tune_blocks.py); so is every trial's run.
- **Pruning.** A trial trains its seeds one after another. At each evaluation point the pruner sees
  the running paired val_nll difference, (the finished seeds' final differences + the running
  seed's current one) / seeds so far, reported at position seed index x (steps + 1) + step: the
  same seeds and steps for every trial, so a trial is only ever compared with the others at the
  same point. val_nll is evaluated densely; the objective's own metric may be measured only at the
  end. A run a trial reuses reports nothing (it costs nothing either).
- **Anchor.** The first trial of a new study is the paper's default coefficient (every head's,
  with --per-head), so the study always holds the reference it should beat.
- **Selection.** The top `--rescore` trials are trained on RESCORE_SEEDS more seeds, and the winner
  is the best on all selection seeds pooled: a top trial is partly a lucky draw, and more seeds
  shrink that luck before the choice is made.
- **Confirmation.** The winner, the default and the baseline are trained on `--confirm-seeds`
  seeds of the confirmation block (spec.CONFIRMATION_SEEDS on, never used for selection), and the
  winner is compared with each by a paired 95% interval and its verdict (analysis/stats.py).
- **Export** (tune_export.py): an experiment spec with the baseline, default and tuned rows that
  `mirai-lab sweep --experiment FILE` accepts, and tune.json with the whole record.

Trials run one at a time in this process (the pruner needs their evaluations); `--workers` trains
the blocks (baseline, rescoring, confirmation) that many runs at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mirai_lab.config import MAX_SEEDS, MAX_WORKERS, ForesightConfig, RunConfig, check_budget, check_used
from mirai_lab.errors import UserError
from mirai_lab.experiments.spec import CONFIRMATION_SEEDS
from mirai_lab.experiments.storage import check_storage_reachable, check_storage_url, open_storage
from mirai_lab.experiments.tune_blocks import BLOCKS, block_name, paired_mean
from mirai_lab.files.digest import content_hash
from mirai_lab.foresight.fit import configure
from mirai_lab.metrics import DEFAULT_OBJECTIVE, FID, REGISTRY, STOPPING, VAL_NLL
from mirai_lab.results_dir import run_dir, safe_name, studies_dir
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.lock import claim_run
from mirai_lab.runs.state import RunState, set_status
from mirai_lab.training.precision import auto_precision
from mirai_lab.training.trainer import Diverged, Trainer

# Every run of a study measures its sample metrics at the final evaluation only: the pruner reads the
# dense val_nll and the objective the final value, so samples drawn at the points between would be
# paid for and never read (the table specs do the same; --set eval.metrics_in_training=true restores them).
STUDY_BASE = {"eval.metrics_in_training": False}
SOURCES = {
    "ema": {**STUDY_BASE, "foresight.source": "ema", "foresight.k": 3, "foresight.layout": "2d"},
    "bidirectional": {**STUDY_BASE, "foresight.source": "bidirectional", "foresight.encoder": "mtm", "foresight.k": 1},
}
# what --source is not: mtp heads predict future tokens and read no teacher (foresight.source = none)
NOT_SOURCES = {"mtp": "mtp is an injection level (foresight.injection=mtp: token-prediction heads that read no "
                      "teacher), not a foresight source"}
OBJECTIVES = tuple(m for m in STOPPING if REGISTRY[m].lower_is_better)  # the study minimises
PRUNERS = ("median", "hyperband", "none")
SCHEDULES = ("constant", "step", "cosine")  # the alignment schedules --search-schedule tries
DEFAULT_COEF = ForesightConfig().coef  # the paper's alignment coefficient: the study's anchor
DEFAULT_SEEDS = 2
RESCORE_SEEDS = 3  # seeds added to each rescored trial, after the selection seeds
COEF_RANGE = (0.05, 8.0)  # searched on a log scale
WARMUP_RANGE = (0.0, 0.4)
SEARCH_FLAGS = {"warmup_frac": "warmup", "schedule": "schedule", "student_block": "block"}  # --search-<flag>
# the settings that make two studies' values comparable: a study reopened with others is refused
IDENTITY = ("budget", "source", "metric", "seeds", "per_head", "searched", "set")

TrialProgress = Callable[[int, int, int, dict[str, float]], None]  # (seed, step, total steps, curve row)


@dataclass
class TuneOptions:
    source: str
    trials: int
    budget: str
    objective: str = DEFAULT_OBJECTIVE
    pruner: str = "median"
    per_head: bool = False
    search_warmup: bool = False
    search_schedule: bool = False
    search_block: bool = False
    study: str | None = None  # None: the name study_name() gives; an explicit name is checked, "" included
    storage: str | None = None
    base: dict[str, Any] | None = None
    seeds: int = DEFAULT_SEEDS
    rescore: int = 3
    confirm_seeds: int = 5
    workers: int = 1

    @property
    def searched(self) -> list[str]:
        """The searched foresight fields besides the coefficients (their Optuna parameter names)."""
        on = (self.search_warmup, self.search_schedule, self.search_block)
        return [name for name, chosen in zip(SEARCH_FLAGS, on, strict=True) if chosen]

    def validate(self) -> RunConfig:
        """Check everything a study needs before its database is created; returns the reference
        config (the source's settings and --set values at the budget, foresight on)."""
        if self.source in NOT_SOURCES:
            raise UserError(f"--source {self.source}: {NOT_SOURCES[self.source]}; expected {' or '.join(SOURCES)}")
        if self.source not in SOURCES:
            raise UserError(f"--source {self.source!r}: expected {' or '.join(SOURCES)}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if self.pruner not in PRUNERS:
            raise UserError(f"--pruner {self.pruner!r}: expected one of {', '.join(PRUNERS)}")
        for flag, value, lo, hi in (("--trials", self.trials, 1, None), ("--seeds", self.seeds, 1, MAX_SEEDS),
                                    ("--rescore", self.rescore, 0, None),
                                    ("--confirm-seeds", self.confirm_seeds, 3, MAX_SEEDS),
                                    ("--workers", self.workers, 1, MAX_WORKERS)):
            if value < lo or (hi is not None and value > hi):
                raise UserError(f"{flag} {value}: expected >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
        check_budget(self.budget, "--budget")
        if self.study is not None:
            safe_name(self.study, "--study")  # it names a file under <results>/studies
            room = 200 - max(len(block_name("", b)) for b in BLOCKS)  # safe_name's 200 characters
            if len(self.study) > room:
                raise UserError(f"--study: {len(self.study)} characters; expected at most {room} (the study's "
                                "sweeps add -baseline, -rescore and -fresh to it)")
        self.study = self.study or study_name(self)
        check_storage_url(self.storage)
        for key, why in self._set_by_the_study().items():
            if key in (self.base or {}):
                raise UserError(f"--set {key}: the study sets it ({why}); drop it")
        reference = configure(None, dict(SOURCES[self.source], **(self.base or {})), self.budget)
        if self.objective == FID and not reference.eval.metrics:
            raise UserError("--objective fid_domain needs eval.metrics=true (or use --objective val_nll)")
        # a trial reads what the search sets too: a --set step_at counts if a searched schedule is `step`
        searched = [configure(None, dict(SOURCES[self.source], **(self.base or {}), **{"foresight.schedule": s}),
                              self.budget) for s in SCHEDULES] if self.search_schedule else []
        check_used(self.base or {}, [reference, *searched], "this study's trials")
        check_storage_reachable(self.storage)  # last: it may wait for a database
        return reference

    def _set_by_the_study(self) -> dict[str, str]:
        own = {"foresight.source": "--source", "foresight.coef": "the search", "foresight.head_coefs": "the search",
               "train.seed": "--seeds"}
        return {**own, **{f"foresight.{name}": f"--search-{SEARCH_FLAGS[name]}" for name in self.searched}}


def study_name(opts: TuneOptions) -> str:
    """tune-<source>-<budget>, then what differs from the defaults (objective, seeds, heads, searched
    fields, --set), so that a study of other settings never reopens this one's."""
    parts = ["tune", opts.source, opts.budget]
    if opts.objective != DEFAULT_OBJECTIVE:
        parts.append(opts.objective)
    if opts.seeds != DEFAULT_SEEDS:
        parts.append(f"s{opts.seeds}")
    if opts.per_head:
        parts.append("heads")
    parts += [SEARCH_FLAGS[name] for name in opts.searched]
    if opts.base:
        parts.append(f"set{content_hash(opts.base, 6)}")
    return "-".join(parts)


def settings(opts: TuneOptions) -> dict[str, Any]:
    """What the study is, as user attributes (optuna-dashboard shows them) and in tune.json."""
    n = opts.seeds
    return {
        "budget": opts.budget, "source": opts.source, "metric": opts.objective,
        "objective": f"paired to the baseline: mean over seeds 0..{n - 1} of (trial - baseline) final "
                     f"{opts.objective}; lower is better",
        "seeds": list(range(n)), "per_head": opts.per_head, "searched": list(opts.searched),
        "set": dict(opts.base or {}), "default_coef": DEFAULT_COEF, "first_trial": "the default coefficient",
        "pruner": opts.pruner, "pruning": "running paired val_nll difference to the baseline" if opts.pruner != "none"
        else "none",
        "rescore": opts.rescore, "rescore_seeds": list(range(n, n + RESCORE_SEEDS)),
        "confirm_seeds": opts.confirm_seeds, "confirmation_seeds_from": CONFIRMATION_SEEDS,
        "confirmation": "winner vs default and vs baseline on fresh seeds, paired 95% intervals",
    }


def suggest(trial: optuna.Trial, opts: TuneOptions, n_layer: int) -> dict[str, Any]:
    """The trial's config overrides (the source's settings, --set values and the suggested values)."""
    k = int(trial_overrides(opts, {})["foresight.k"])  # the source's, or a --set one
    params: dict[str, Any] = {}
    if opts.per_head and k > 1:
        for i in range(k):
            params[f"coef_k{i}"] = trial.suggest_float(f"coef_k{i}", *COEF_RANGE, log=True)
    else:
        params["coef"] = trial.suggest_float("coef", *COEF_RANGE, log=True)
    if opts.search_warmup:
        params["warmup_frac"] = trial.suggest_float("warmup_frac", *WARMUP_RANGE)
    if opts.search_schedule:
        params["schedule"] = trial.suggest_categorical("schedule", list(SCHEDULES))
    if opts.search_block:
        params["student_block"] = trial.suggest_int("student_block", 1, n_layer - 1)
    return trial_overrides(opts, params)


def default_params(opts: TuneOptions, reference: RunConfig) -> dict[str, Any]:
    """The anchor trial's parameters: the default coefficient on every head, the other searched
    fields at the reference config's values."""
    k = reference.foresight.k
    params: dict[str, Any] = ({f"coef_k{i}": DEFAULT_COEF for i in range(k)} if opts.per_head and k > 1
                              else {"coef": DEFAULT_COEF})
    for name in opts.searched:
        params[name] = getattr(reference.foresight, name)
    return params


def params_to_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna parameters -> foresight config keys."""
    out: dict[str, Any] = {}
    heads = sorted((k for k in params if k.startswith("coef_k")), key=lambda k: int(k.removeprefix("coef_k")))
    if heads:
        out["foresight.head_coefs"] = [params[k] for k in heads]
    if "coef" in params:
        out["foresight.coef"] = params["coef"]
    for key in ("warmup_frac", "schedule", "student_block"):
        if key in params:
            out[f"foresight.{key}"] = params[key]
    return out


def trial_overrides(opts: TuneOptions, params: Mapping[str, Any]) -> dict[str, Any]:
    return {**SOURCES[opts.source], **(opts.base or {}), **params_to_overrides(params)}


def baseline_overrides(opts: TuneOptions) -> dict[str, Any]:
    """The baseline: the study's settings with foresight off (a spec's `baseline = true` row)."""
    return {k: v for k, v in {**SOURCES[opts.source], **(opts.base or {})}.items() if not k.startswith("foresight.")}


def describe(params: Mapping[str, Any]) -> str:
    """`coef 0.7312`, `coefs [0.5, 1.2, 3]`, then the other searched values."""
    over = params_to_overrides(params)
    heads = over.pop("foresight.head_coefs", None)
    text = (f"coefs [{', '.join(f'{c:.4g}' for c in heads)}]" if heads
            else f"coef {over.pop('foresight.coef'):.4g}")
    rest = ", ".join(f"{k.removeprefix('foresight.')} {v:.4g}" if isinstance(v, float)
                     else f"{k.removeprefix('foresight.')} {v}" for k, v in over.items())
    return f"{text} ({rest})" if rest else text


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def storage_url(opts: TuneOptions, root: Path) -> str:
    return opts.storage or f"sqlite:///{(studies_dir(root) / (str(opts.study) + '.db')).resolve()}"


def open_study(opts: TuneOptions, root: Path) -> optuna.Study:
    url = storage_url(opts, root)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, studies_dir(root) / f"{opts.study}.journal")
    study = optuna.create_study(study_name=opts.study, storage=storage, direction="minimize",
                                pruner=make_pruner(opts.pruner), load_if_exists=True)
    # A sampler's random state lives in its process, not in the storage: seeded alike in every
    # process, a resumed study would draw its first trials' parameters again. Seeding by the number
    # of trials already stored keeps a new study reproducible and a resumed one from repeating.
    study.sampler = optuna.samplers.TPESampler(seed=len(study.trials))
    return study


def check_settings(study: optuna.Study, opts: TuneOptions) -> None:
    """Refuse to add trials to a study whose values mean something else (other seeds, metric, budget...)."""
    stored = study.user_attrs
    if study.trials and "objective" not in stored:
        raise UserError(f"study {study.study_name!r} holds trials scored by an earlier objective (the raw final "
                        "value, not the paired difference to the baseline): pass --study NEW")
    mine = json.loads(json.dumps(settings(opts)))  # as the storage gives it back
    changed = [f"{k} {stored[k]!r}, not {mine[k]!r}" for k in IDENTITY if k in stored and stored[k] != mine[k]]
    if changed:
        raise UserError(f"study {study.study_name!r} was made with other settings ({'; '.join(changed)}): its "
                        "values would not compare with new trials; pass --study NEW, or the study's settings")


def resolve_study_precision(study: optuna.Study, opts: TuneOptions, root: Path, reference: RunConfig) -> None:
    """train.precision = auto, resolved once per study (the study's record wins over a new
    measurement) and written into the study's overrides, so that every run id holds it."""
    if reference.train.precision != "auto":
        return
    chosen = study.user_attrs.get("precision") or auto_precision(reference, root)["precision"]
    study.set_user_attr("precision", chosen)
    opts.base = {**(opts.base or {}), "train.precision": chosen}


def pruning_point(index: int, total: int, step: int, finished: list[float], current: float) -> tuple[int, float]:
    """(position, value) reported to the pruner at `step` of the trial's seed number `index`: the
    position is the same for every trial at that seed and step; the value is the paired val_nll
    difference so far, the finished seeds' final ones and the running seed's current one averaged."""
    return index * (total + 1) + step, (sum(finished) + current) / (len(finished) + 1)


class PairedObjective:
    """A trial's value: the paired difference of its runs to the baseline's on the same seeds.

    `baseline` holds the baseline's final.json per seed. A trial whose run diverges scores inf
    (kept, the worst value); a pruned run keeps its checkpoint and is marked `pruned`."""

    def __init__(self, opts: TuneOptions, root: Path, baseline: Mapping[int, Mapping[str, Any]],
                 curves: Mapping[int, Mapping[int, float]], n_layer: int, progress: TrialProgress | None = None):
        self.opts, self.root, self.n_layer, self.progress = opts, root, n_layer, progress
        self.seeds = list(range(opts.seeds))
        self.baseline = {s: float(baseline[s][opts.objective]) for s in self.seeds}
        self.baseline_nll = {s: float(baseline[s][VAL_NLL]) for s in self.seeds}
        self.curves = curves

    def __call__(self, trial: optuna.Trial) -> float:
        over = suggest(trial, self.opts, self.n_layer)
        values: dict[int, float] = {}
        nll_differences: list[float] = []
        run_ids: list[str] = []
        for index, seed in enumerate(self.seeds):
            cfg = configure(None, {**over, "train.seed": seed}, self.opts.budget)
            run_ids.append(run_id_of(cfg))
            trial.set_user_attr("run_ids", run_ids)
            final = self._run(trial, cfg, index, seed, nll_differences)
            if final is None:
                return math.inf
            values[seed] = float(final[self.opts.objective])
            nll_differences.append(float(final[VAL_NLL]) - self.baseline_nll[seed])
        trial.set_user_attr("differences", {str(s): values[s] - self.baseline[s] for s in self.seeds})
        return paired_mean(values, self.baseline, self.seeds)

    def _run(self, trial: optuna.Trial, cfg: RunConfig, index: int, seed: int,
             finished: list[float]) -> dict[str, Any] | None:
        """Train (or reuse) one run of the trial; None if it diverged."""
        curve = self.curves.get(seed, {})

        def report(step: int, total: int, row: dict[str, float]) -> None:
            if self.progress is not None:
                self.progress(seed, step, total, row)
            if VAL_NLL in row and step in curve:
                position, value = pruning_point(index, total, step, finished, row[VAL_NLL] - curve[step])
                trial.report(value, position)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at seed {seed}, step {step}")

        path = run_dir(self.root, run_id_of(cfg))
        with claim_run(path) as done:  # one trainer per run on this machine (runs/lock.py)
            if done is not None:
                return done
            try:
                return Trainer(cfg, self.root, report).run()
            except optuna.TrialPruned:
                set_status(path, RunState.PRUNED)
                raise
            except Diverged:
                return None
