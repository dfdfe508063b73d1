"""Rich progress for a single run (sweeps have their own live table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mirai_lab.config import RunConfig
from mirai_lab.errors import UserError
from mirai_lab.messages import show_progress
from mirai_lab.training.run import execute
from mirai_lab.training.trainer import Diverged


def run_with_progress(cfg: RunConfig, root: Path, quiet: bool = False) -> tuple[dict[str, Any], Path, bool]:
    console = Console(stderr=True)
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, disable=not show_progress(quiet), transient=True) as bar:
        task = bar.add_task("train", total=cfg.train.steps, info="preparing data and caches")

        def on_eval(step: int, total: int, row: dict[str, float]) -> None:
            info = " ".join(f"{k} {row[k]:.3g}" for k in ("train_ntp", "val_nll", "fid_domain") if k in row)
            bar.update(task, completed=step, info=info)

        try:
            return execute(cfg, root, on_eval)
        except Diverged as exc:
            raise UserError(f"run diverged: {exc} (status.json says failed)") from None


