"""Experiment trackers: a run's curve rows and final metrics in TensorBoard or W&B, offline.

`--tracker none|tensorboard|wandb` (or $MIRAI_LAB_TRACKER) picks one; the choice travels to
sweep workers through the environment. Nothing goes over the network: TensorBoard writes
event files to <run>/tensorboard/, W&B runs in offline mode with its files under <run>/wandb/
(`wandb sync <run>/wandb/offline-run-*` uploads them later, if you want to). Every evaluation
row of the curve is logged at its step, the final metrics under `final/` at the last step, and
the run id, variant and seed are the run's tags and config. Tracking never changes a run: it
is not part of the config or the run id, and a run that is already done logs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mirai_lab.config import RunConfig
from mirai_lab.errors import UserError

TRACKER_ENV = "MIRAI_LAB_TRACKER"
TRACKERS = ("none", "tensorboard", "wandb")
ProgressFn = Callable[[int, int, dict[str, float]], None]


def select(kind: str | None) -> None:
    """Choose the tracker for this process and the sweep workers it starts (None keeps $MIRAI_LAB_TRACKER)."""
    if kind is None:
        return
    if kind not in TRACKERS:
        raise UserError(f"--tracker {kind!r}: expected one of {', '.join(TRACKERS)}")
    os.environ[TRACKER_ENV] = kind


def selected() -> str:
    kind = os.environ.get(TRACKER_ENV, "none") or "none"
    if kind not in TRACKERS:
        raise UserError(f"${TRACKER_ENV}={kind!r}: expected one of {', '.join(TRACKERS)}")
    return kind


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) metrics dict as flat `a/b` keys; text and flags are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(numeric(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class Tracker:
    """One run in one tracker: `log` a curve row, `finish` with the final metrics, `close`."""

    def log(self, step: int, row: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, step: int, final: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path, tags: dict[str, Any], config: dict[str, Any]) -> None:
        # optional heavy dependency (the `trackers` extra): imported only when chosen
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
        self.writer.add_text("run", json.dumps(tags, sort_keys=True), 0)
        self.writer.add_text("config", json.dumps(config, sort_keys=True), 0)

    def log(self, step: int, row: dict[str, float]) -> None:
        for name, value in numeric(row).items():
            self.writer.add_scalar(f"curve/{name}", value, step)
        self.writer.flush()

    def finish(self, step: int, final: dict[str, Any]) -> None:
        for name, value in numeric(final).items():
            self.writer.add_scalar(f"final/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, folder: Path, tags: dict[str, Any], config: dict[str, Any]) -> None:
        # optional heavy dependency (the `trackers` extra): imported only when chosen
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(mode="offline", dir=str(folder), project="mirai-lab", name=tags["run_id"],
                              job_type=tags.get("variant") or None,
                              tags=[str(v) for v in (tags.get("variant"), f"seed{tags['seed']}") if v],
                              config={**config, "mirai_lab": tags}, reinit="create_new",
                              settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True,
                                                      save_code=False))

    def log(self, step: int, row: dict[str, float]) -> None:
        self.run.log({f"curve/{k}": v for k, v in numeric(row).items()}, step=step)

    def finish(self, step: int, final: dict[str, Any]) -> None:
        values = {f"final/{k}": v for k, v in numeric(final).items()}
        self.run.log(values, step=step)
        self.run.summary.update(values)

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str, folder: Path, tags: dict[str, Any], config: dict[str, Any]) -> Tracker | None:
    if kind == "tensorboard":
        return TensorBoardTracker(folder, tags, config)
    if kind == "wandb":
        return WandbTracker(folder, tags, config)
    return None


@contextlib.contextmanager
def tracked(cfg: RunConfig, folder: Path, run_id: str, progress: ProgressFn | None, variant: str | None = None,
            ) -> Iterator[tuple[ProgressFn | None, Callable[[dict[str, Any]], None]]]:
    """(progress callback that also logs each curve row, function that logs the final metrics)
    for the selected tracker; with none, the progress callback as it is and a no-op."""
    tracker = open_tracker(selected(), folder, {"run_id": run_id, "variant": variant or "", "seed": cfg.train.seed,
                                                "budget": cfg.budget}, cfg.to_dict())
    if tracker is None:
        yield progress, lambda final: None
        return

    def on_eval(step: int, total: int, row: dict[str, float]) -> None:
        tracker.log(step, row)
        if progress is not None:
            progress(step, total, row)

    try:
        yield on_eval, lambda final: tracker.finish(int(final.get("steps", cfg.train.steps)), final)
    finally:
        tracker.close()
