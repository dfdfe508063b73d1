"""Progress of one run, fitted to where it runs (sweeps in a terminal have their own live table).

In a terminal, `train` draws a live bar updated every step: step, loss, lr, steps/s, ETA. Where
stderr is not a terminal (a log file, a pipe, a sweep worker's log, a batch job), a live display
draws nothing useful, so a run writes plain lines instead, one every `--log-every-s` seconds
(default 30), each greppable on its own:

    progress: run <id> step 120/320 loss 2.345 lr 2.0e-03 3.1 steps/s eta 64s

Only rank 0 shows progress under torchrun. The loss is read from the device when a line is
written (or the bar's loss refreshed, at most once a second): one synchronisation then, never
one per step (training/trainer.py). The interval is not part of the run config or the run id:
`--log-every-s` on `train` and `sweep` sets $MIRAI_LAB_LOG_EVERY_S, which sweep workers inherit
(as they inherit --tracker).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mirai_lab.distributed import is_main_process
from mirai_lab.errors import UserError
from mirai_lab.messages import console, say, show_progress
from mirai_lab.runs.tracking import StepView, TrainingHook

LOG_EVERY_ENV = "MIRAI_LAB_LOG_EVERY_S"
LOG_EVERY_S = 30.0
BAR_READ_S = 1.0  # the live bar reads the loss from the device at most this often


def select_interval(seconds: float | None) -> None:
    """Set the seconds between progress lines for this process and the sweep workers it starts."""
    if seconds is not None:
        if not math.isfinite(seconds) or seconds < 0:
            raise UserError(f"--log-every-s {seconds}: expected a number of seconds >= 0")
        os.environ[LOG_EVERY_ENV] = repr(float(seconds))
    log_every_s()


def log_every_s() -> float:
    text = os.environ.get(LOG_EVERY_ENV) or str(LOG_EVERY_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise UserError(f"${LOG_EVERY_ENV}={text!r}: expected a number of seconds >= 0")
    return seconds


class Pace:
    """Steps per second over the window since the last reading, and the time left at that pace."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.at, self.step = clock(), 0

    def start(self, step: int) -> None:
        self.at, self.step = self.clock(), step

    def since(self) -> float:
        return self.clock() - self.at

    def read(self, step: int, total: int) -> tuple[float, float]:
        """(steps/s, seconds left), and a new window from here."""
        now = self.clock()
        rate = (step - self.step) / (now - self.at) if now > self.at else 0.0
        self.at, self.step = now, step
        return rate, ((total - step) / rate if rate > 0 else math.inf)


def progress_line(run_id: str, view: StepView, loss: float, rate: float, eta_s: float) -> str:
    eta = f"{eta_s:.0f}s" if math.isfinite(eta_s) else "?"
    return (f"progress: run {run_id} step {view.step}/{view.total} loss {loss:.4g} lr {view.lr:.1e} "
            f"{rate:.3g} steps/s eta {eta}")


class ProgressLines(TrainingHook):
    """A plain line every `every_s` seconds (0: every step), for logs."""

    def __init__(self, run_id: str, every_s: float, write: Callable[[str], None] = say,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_id = run_id
        self.every_s = every_s
        self.write = write
        self.pace = Pace(clock)

    def on_start(self, step: int, total: int) -> None:
        self.pace.start(step)

    def on_step(self, view: StepView) -> None:
        if self.pace.since() >= self.every_s:
            rate, eta = self.pace.read(view.step, view.total)
            self.write(progress_line(self.run_id, view, view.loss(), rate, eta))


class ProgressBar(TrainingHook):
    """The live bar of `train` in a terminal, updated every step; the loss refreshed once a second."""

    def __init__(self, bar: Progress, clock: Callable[[], float] = time.monotonic) -> None:
        self.bar = bar
        self.task = bar.add_task("train", total=None, info="preparing data and caches")
        self.pace = Pace(clock)
        self.info = ""
        self.val = ""

    def on_start(self, step: int, total: int) -> None:
        self.pace.start(step)
        self.bar.update(self.task, total=total, completed=step, info="")

    def on_step(self, view: StepView) -> None:
        if not self.info or self.pace.since() >= BAR_READ_S:
            rate, eta = self.pace.read(view.step, view.total)
            left = f"{eta:.0f}s" if math.isfinite(eta) else "?"
            self.info = f"loss {view.loss():.4g} lr {view.lr:.1e} {rate:.3g} steps/s eta {left}"
        self.bar.update(self.task, completed=view.step, info=f"{self.info}{self.val}")

    def on_point(self, step: int, row: dict[str, float], steps: list[dict[str, float]]) -> None:
        if "val_nll" in row:
            self.val = f" val_nll {row['val_nll']:.4g}"

    def on_final(self, step: int, final: dict[str, Any], row: dict[str, float]) -> None:
        self.bar.update(self.task, info="final evaluation done")


@contextlib.contextmanager
def progress_display(run_id: str, bar: bool) -> Iterator[list[TrainingHook]]:
    """The progress hooks of a run: the live bar when `bar` and stderr is a terminal, lines when
    stderr is not a terminal, nothing on a terminal otherwise (a sweep's table) or off rank 0."""
    if not is_main_process():
        yield []
    elif not console.is_terminal:
        yield [ProgressLines(run_id, log_every_s())]
    elif bar and show_progress():
        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[info]}", markup=False))
        with Progress(*columns, console=console, transient=True) as shown:
            yield [ProgressBar(shown)]
    else:
        yield []
