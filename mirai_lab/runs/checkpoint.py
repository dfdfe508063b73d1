"""A run's checkpoint: the one place it is saved, verified and loaded.

The checkpoint (`checkpoint.pt`) holds the model, EMA, foresight-head and optimizer states,
the step, torch's CPU (and CUDA) generator states, the wall time so far, the run id, and the
length and sha256 of the curve as it stood when the checkpoint was written. It is written by
`save_tensors`, which stores a sha256 of the whole payload, and read with weights_only
(tensors and containers: no pickled code can run).

A resume uses it only if everything agrees: the file loads and passes its checksum, every
entry has the keys, shapes and dtypes this run's modules expect, and the first
`curve_rows` rows of curve.csv hash to `curve_sha256` (rows written after the checkpoint
are dropped: they are recomputed). Anything else (a truncated or bit-flipped file, a text
file, a valid torch file of another run or shape, a garbage curve) is reported in one
warning line and the run restarts from scratch; training is deterministic, so the restart
ends where an uninterrupted run ends. A file carrying pickled objects is refused, never
loaded (UserError from `load_tensors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mirai_lab.errors import CorruptFile
from mirai_lab.files.tensors import load_tensors, save_tensors
from mirai_lab.results_dir import CHECKPOINT, CURVE
from mirai_lab.runs.curve import Curve

OPTIONAL = ("cuda_rng",)  # restored when present and on CUDA: no training noise depends on it


@dataclass
class Resume:
    state: dict[str, Any]
    curve: Curve


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    save_tensors(run_dir / CHECKPOINT, state)


def load_resume(run_dir: Path, run_id: str, template: dict[str, Any], optimizer: torch.optim.Optimizer,
                max_step: int) -> Resume:
    """The checkpoint and curve to resume from; CorruptFile (with the reason) when they cannot be trusted.

    `template` is the trainer's checkpoint state before any step (this run's keys, shapes and
    dtypes); the optimizer's state is checked against the shapes of `optimizer`'s parameters."""
    path = run_dir / CHECKPOINT
    state = load_tensors(path, checked=True)
    _check_like(template, state, "checkpoint", skip=("optimizer",))
    if state["config_hash"] != run_id:
        raise CorruptFile(f"{path} belongs to run {state['config_hash']!r}, not {run_id!r}")
    step, rows = state["step"], state["curve_rows"]
    if not (1 <= step <= max_step and rows >= 0):
        raise CorruptFile(f"{path}: step {step} or curve_rows {rows} out of range")
    _check_optimizer(state["optimizer"], optimizer, path)
    curve = Curve.load(run_dir / CURVE, run_id)
    head = curve.head(rows)
    if len(curve.rows) < rows or head.digest() != state["curve_sha256"]:
        raise CorruptFile(f"{run_dir / CURVE} does not match the checkpoint of step {step}")
    return Resume(state, head)


def _check_like(expected: Any, actual: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    """`actual` has the structure of `expected`: the same keys, tensor shapes and dtypes, value types."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape or actual.dtype != expected.dtype:
            got = f"{tuple(actual.shape)} {actual.dtype}" if isinstance(actual, torch.Tensor) else type(actual).__name__
            raise CorruptFile(f"{where}: expected a {tuple(expected.shape)} {expected.dtype} tensor, got {got}")
    elif isinstance(expected, dict):
        if not isinstance(actual, dict):
            raise CorruptFile(f"{where}: expected a dict, got {type(actual).__name__}")
        keys = set(actual) - set(OPTIONAL)
        if keys != set(expected) - set(OPTIONAL):
            missing, extra = sorted(map(str, set(expected) - keys)), sorted(map(str, keys - set(expected)))
            raise CorruptFile(f"{where}: missing keys {missing}, unexpected keys {extra}")
        for key, value in expected.items():
            if key not in skip and key in actual:
                _check_like(value, actual[key], f"{where}.{key}")
    elif type(actual) is not type(expected):
        raise CorruptFile(f"{where}: expected a {type(expected).__name__}, got {type(actual).__name__}")


def _check_optimizer(state: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The saved AdamW state fits these parameters: same groups, and moments shaped like each parameter."""
    own = optimizer.state_dict()
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        raise CorruptFile(f"{path}: the optimizer entry is not an optimizer state")
    groups, own_groups = state["param_groups"], own["param_groups"]
    same = isinstance(groups, list) and len(groups) == len(own_groups) and all(
        isinstance(g, dict) and g.get("params") == o["params"] for g, o in zip(groups, own_groups, strict=True))
    if not same:
        raise CorruptFile(f"{path}: the optimizer's parameter groups differ from this run's")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    entries = state["state"]
    if not isinstance(entries, dict) or not set(entries) <= set(range(len(params))):
        raise CorruptFile(f"{path}: the optimizer state names parameters this run does not have")
    for i, entry in entries.items():
        p = params[i].detach()
        moment = torch.empty(p.shape, dtype=p.dtype, device="meta")
        expected = {"step": torch.empty((), dtype=torch.float32, device="meta"), "exp_avg": moment,
                    "exp_avg_sq": moment}
        _check_like(expected, entry, f"{path}: optimizer state {i}")
