"""The live table of a sweep, rebuilt from the run directories, so it also shows runs trained by other workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from mirai_lab.metrics import FID, VAL_NLL
from mirai_lab.results_dir import CURVE, run_dir
from mirai_lab.runs.curve import Curve
from mirai_lab.runs.state import RunState, run_state

LIVE = (VAL_NLL, FID)  # the metrics the live table shows


class SweepMonitor:
    """One live table of a sweep, rebuilt from the run directories (so it also shows the
    progress of runs trained by other worker processes)."""

    def __init__(self, plan: Any, root: Path, quiet: bool = False) -> None:

        self.plan = plan
        self.root = root
        self.quiet = quiet
        self.live = Live(console=Console(stderr=True), refresh_per_second=2, transient=False)
        self.steps: dict[str, tuple[int, dict[str, float]]] = {}
        self._current: str | None = None

    def __enter__(self) -> SweepMonitor:
        if not self.quiet:
            self.live.__enter__()
            self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.refresh()
            self.live.__exit__(None, None, None)

    def current(self, run_id: str) -> None:
        self._current = run_id
        self.refresh()

    def on_eval(self, run_id: str) -> Any:
        def callback(step: int, total: int, row: dict[str, float]) -> None:
            self.steps[run_id] = (step, row)
            self.refresh()

        return callback

    def _last_step(self, run_id: str) -> tuple[int, dict[str, float]]:
        if run_id in self.steps:
            return self.steps[run_id]

        try:
            rows = Curve.load(run_dir(self.root, run_id) / CURVE, run_id).rows
        except (OSError, ValueError, KeyError):
            return 0, {}
        if not rows:
            return 0, {}
        last = rows[-1][1]
        return last, {r[4]: r[5] for r in rows if r[1] == last}

    def table(self) -> Any:


        counts = {s.value: 0 for s in RunState}
        table = Table(title=f"sweep {self.plan.name} ({self.plan.budget})", expand=False)
        for col in ("run", "variant", "seed", "state", "step", *LIVE):
            table.add_column(col)
        seen: set[str] = set()
        for run in self.plan.runs:
            if run.run_id in seen:
                continue
            seen.add(run.run_id)
            state = run_state(run_dir(self.root, run.run_id))
            counts[state.value] += 1
            if state in (RunState.RUNNING, RunState.FAILED) or run.run_id == self._current:
                step, row = self._last_step(run.run_id)
                table.add_row(run.run_id, run.variant, str(run.seed), state.value, f"{step}/{run.cfg.train.steps}",
                              *(f"{row[k]:.4g}" if k in row else "-" for k in LIVE))
        table.caption = " | ".join(f"{k} {v}" for k, v in counts.items())
        return table

    def refresh(self) -> None:
        if not self.quiet:
            self.live.update(self.table())
