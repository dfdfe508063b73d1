"""A finished sweep written straight to disk (config, status and final.json per run, a manifest):
what `confirm` and `robust` read, without training anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirai_lab.config import build_config
from mirai_lab.runs.identity import run_id_of


def write_run(root: Path, run_id: str, cfg: dict, value: float) -> None:
    path = root / "runs" / run_id
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "status.json").write_text(json.dumps({"state": "done"}))
    (path / "final.json").write_text(json.dumps({"val_nll": value, "steps": 4}))


def write_finished_sweep(root: Path, values: dict[str, dict[int, float]],
                         overrides: Callable[[str], dict[str, Any]], budget: str | None = None) -> Path:
    """Sweep `s` under `root` (a `quick` manifest): each variant's final val_nll per seed, its runs
    configured by `overrides(variant)` on the synthetic set at `budget`; the baseline is `baseline`."""
    runs = []
    for variant, per_seed in values.items():
        for seed, value in per_seed.items():
            over = overrides(variant)
            cfg = build_config(None, {"data.dataset": "synthetic", "train.seed": seed, **over}, budget)
            run_id = run_id_of(cfg)
            write_run(root, run_id, cfg.to_dict(), value)
            runs.append({"run_id": run_id, "variant": variant, "seed": seed, "overrides": over,
                         "config": cfg.to_dict(), "depends_on": None})
    (root / "sweeps" / "s").mkdir(parents=True)
    (root / "sweeps" / "s" / "manifest.json").write_text(json.dumps(
        {"name": "s", "budget": "quick", "seeds": [0, 1, 2], "axes": ["v"], "baseline": "baseline",
         "command": "c", "runs": runs}))
    return root
