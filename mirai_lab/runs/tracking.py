"""Experiment trackers: a run's training steps, curve and final metrics in TensorBoard or W&B.

`--tracker none|tensorboard|wandb` (or $MIRAI_LAB_TRACKER) picks one; the choice travels to
sweep workers through the environment, as W&B's own settings do. What a tracker receives:

- every optimizer step under `train/`: the total loss, the NTP loss, each head's alignment
  loss, lambda (the foresight scale), lr, the gradient norm, steps/s and tokens/s (host clock);
- every curve point under `curve/` (runs/curve.py), the final evaluation's point included;
- the final metrics as the run's summary (W&B `run.summary`; TensorBoard's HParams tab, with the
  run's config as its hyperparameters and final.json as text), not as one-point scalars.

The per-step values stay on the device while the run trains and are read in one transfer per
curve point (training/trainer.py), so a tracker adds no synchronisation to the step.

A run is named `<sweep>/<variant>/s<seed>` (`train/<run id>/s<seed>` outside a sweep), with the
run id as a tag and in the config. TensorBoard writes event files under
<run>/tensorboard/<name>/, so `tensorboard --logdir results/runs` shows every run by that name.
W&B keeps its files under <run>/wandb/; group = the sweep, job type = the budget, config = the
resolved run config. W&B reads its own variables: WANDB_PROJECT (default mirai-lab),
WANDB_ENTITY, and WANDB_MODE, whose default here is offline: nothing goes over the network unless
WANDB_MODE=online is set (`wandb sync <run>/wandb/offline-run-*` uploads an offline run later).

Tracking never changes a run: it is not part of the config or the run id. A run that is already
done logs its stored curve and final metrics (it has no per-step values), once per tracker.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirai_lab.config import RunConfig
from mirai_lab.distributed import is_main_process
from mirai_lab.errors import UserError
from mirai_lab.files.atomic import read_json
from mirai_lab.messages import say
from mirai_lab.results_dir import CURVE, FINAL, TENSORBOARD
from mirai_lab.runs.curve import Curve

TRACKER_ENV = "MIRAI_LAB_TRACKER"
TRACKERS = ("none", "tensorboard", "wandb")
EXTRA = "pip install 'mirai-lab[trackers]'"
WANDB_MODES = ("offline", "online", "disabled")


def select(kind: str | None) -> None:
    """Choose the tracker for this process and the sweep workers it starts (None keeps $MIRAI_LAB_TRACKER).
    A tracker whose package is missing, or a bad WANDB_MODE, is refused here, before anything is written."""
    if kind is not None:
        if kind not in TRACKERS:
            raise UserError(f"--tracker {kind!r}: expected one of {', '.join(TRACKERS)}")
        os.environ[TRACKER_ENV] = kind
    require(selected())


def selected() -> str:
    kind = os.environ.get(TRACKER_ENV, "none") or "none"
    if kind not in TRACKERS:
        raise UserError(f"${TRACKER_ENV}={kind!r}: expected one of {', '.join(TRACKERS)}")
    return kind


def require(kind: str) -> None:
    """Refuse a tracker that cannot run here: its package is missing (the `trackers` extra), or
    W&B's mode is unknown."""
    if kind == "none":
        return
    try:
        importlib.import_module(kind)  # the package itself: torch.utils.tensorboard may be imported already
    except ImportError:
        raise UserError(f"--tracker {kind}: the {kind} package is not installed: {EXTRA}") from None
    if kind == "wandb" and wandb_mode() not in WANDB_MODES:
        raise UserError(f"$WANDB_MODE={wandb_mode()!r}: expected one of {', '.join(WANDB_MODES)}")


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE") or "offline"


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) metrics dict as flat `a/b` keys; text and flags are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(numeric(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


@dataclass(frozen=True)
class StepView:
    """What the trainer says after each optimizer step, on the host. `loss()` reads the step's
    total loss from the device: one synchronisation, for a display to call now and then."""

    step: int
    total: int
    lr: float
    loss: Callable[[], float]


class TrainingHook:
    """What a trainer tells the displays and trackers of its run, on rank 0, between steps.

    `on_point` gets the curve row of a point and, when `wants_steps`, the per-step values since the
    previous point (read from the device in one transfer). Every method does nothing by default."""

    wants_steps = False

    def on_start(self, step: int, total: int) -> None:
        """Training starts (or resumes) at `step`."""

    def on_step(self, view: StepView) -> None:
        """An optimizer step ended; must not read the device on every call."""

    def on_point(self, step: int, row: dict[str, float], steps: list[dict[str, float]]) -> None:
        """A curve point was written (`steps`: one dict per optimizer step, with its `step`)."""

    def on_final(self, step: int, final: dict[str, Any], row: dict[str, float]) -> None:
        """final.json was written; `row` is the final evaluation's curve point at `step`."""


@dataclass(frozen=True)
class RunLabel:
    """How a run is named in a tracker."""

    run_id: str
    sweep: str | None
    variant: str | None
    seed: int
    budget: str

    @property
    def name(self) -> str:
        return f"{self.sweep or 'train'}/{self.variant or self.run_id}/s{self.seed}"

    def tags(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "sweep": self.sweep or "", "variant": self.variant or "",
                "seed": self.seed, "budget": self.budget}


class Tracker(TrainingHook):
    """One run in one tracker: scalars at a step, the summary at the end, `close`."""

    wants_steps = True

    def scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def summary(self, step: int, final: dict[str, Any], row: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def on_point(self, step: int, row: dict[str, float], steps: list[dict[str, float]]) -> None:
        for values in steps:
            self.scalars(int(values["step"]), {f"train/{k}": v for k, v in values.items() if k != "step"})
        self.scalars(step, {f"curve/{k}": v for k, v in numeric(row).items()})

    def on_final(self, step: int, final: dict[str, Any], row: dict[str, float]) -> None:
        self.scalars(step, {f"curve/{k}": v for k, v in numeric(row).items()})
        self.summary(step, final, row)


def _hparam(value: Any) -> Any:
    """A config value as TensorBoard's hparams accept it (numbers, text, flags)."""
    return value if isinstance(value, bool | int | float | str) else json.dumps(value, sort_keys=True)


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path, label: RunLabel, config: dict[str, Any]) -> None:
        # optional heavy dependency (the `trackers` extra): imported only when chosen
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / TENSORBOARD / label.name))
        self.hparams = {**{k: _hparam(v) for k, v in _flat(config).items()},
                        **{f"run/{k}": v for k, v in label.tags().items()}}
        self.writer.add_text("run", json.dumps(label.tags(), sort_keys=True), 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def on_point(self, step: int, row: dict[str, float], steps: list[dict[str, float]]) -> None:
        super().on_point(step, row, steps)
        self.writer.flush()

    def summary(self, step: int, final: dict[str, Any], row: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # the HParams tab reads each metric from the scalar of that tag: the curve's final point
        metrics = {f"curve/{k}": v for k, v in numeric({"val_nll": final.get("val_nll"), **row}).items()}
        for summary in hparams(self.hparams, metrics):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("final", json.dumps(final, sort_keys=True, default=str), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, folder: Path, label: RunLabel, config: dict[str, Any]) -> None:
        # optional heavy dependency (the `trackers` extra): imported only when chosen
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        project = os.environ.get("WANDB_PROJECT") or "mirai-lab"
        self.run = wandb.init(mode=wandb_mode(), dir=str(folder), project=project,
                              entity=os.environ.get("WANDB_ENTITY") or None, name=label.name,
                              group=label.sweep or None, job_type=label.budget or None,
                              tags=[str(v) for v in (label.run_id, label.variant, f"s{label.seed}") if v],
                              config={**config, "mirai_lab": label.tags()}, reinit="create_new",
                              settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True,
                                                      save_code=False))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def summary(self, step: int, final: dict[str, Any], row: dict[str, float]) -> None:
        self.run.summary.update(numeric(final))

    def close(self) -> None:
        self.run.finish()


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def open_tracker(kind: str, folder: Path, label: RunLabel, config: dict[str, Any]) -> Tracker | None:
    require(kind)
    if kind == "tensorboard":
        return TensorBoardTracker(folder, label, config)
    if kind == "wandb":
        return WandbTracker(folder, label, config)
    return None


def _label(cfg: RunConfig, run_id: str, variant: str | None, sweep: str | None) -> RunLabel:
    return RunLabel(run_id, sweep, variant, cfg.train.seed, cfg.budget)


@contextlib.contextmanager
def tracked(cfg: RunConfig, folder: Path, run_id: str, variant: str | None = None, sweep: str | None = None,
            ) -> Iterator[list[TrainingHook]]:
    """The hooks of the selected tracker for a run that trains now: one, or none (no tracker, or a
    rank other than 0 under torchrun); closed when the block ends, however it ends."""
    kind = selected()
    tracker = open_tracker(kind, folder, _label(cfg, run_id, variant, sweep), cfg.to_dict()) \
        if is_main_process() else None
    try:
        yield [tracker] if tracker is not None else []
    finally:
        if tracker is not None:
            tracker.close()


def log_done(cfg: RunConfig, folder: Path, run_id: str, variant: str | None = None, sweep: str | None = None) -> None:
    """A run that was already done, under a selected tracker: its stored curve and final metrics
    logged once (training is not repeated for per-step values), or one line saying why not."""
    kind = selected()
    if kind == "none" or not is_main_process():
        return
    logged = folder / kind
    if logged.exists():
        say(f"run {run_id} is already done and in {kind} ({logged}): nothing logged again")
        return
    final = read_json(folder / FINAL)
    points: dict[int, dict[str, float]] = defaultdict(dict)
    for _, step, _, _, metric, value in Curve.load(folder / CURVE, run_id).rows:
        points[int(step)][metric] = float(value)
    tracker = open_tracker(kind, folder, _label(cfg, run_id, variant, sweep), cfg.to_dict())
    assert tracker is not None
    try:
        for step in sorted(points):
            tracker.on_point(step, points[step], [])
        last = max(points, default=int(final.get("steps", 0)))
        tracker.summary(last, final, points.get(last, {}))
    finally:
        tracker.close()
    say(f"run {run_id} was already done: its stored curve and final metrics logged to {kind} -> {logged} "
        "(per-step values are not stored)")
