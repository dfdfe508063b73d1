"""Runs as stored objects: execute-or-skip, load a trained run, re-evaluate it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mirai_lab.config import RunConfig, config_from_dict, parse_set
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.distributed import world_size
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.files.atomic import read_json, write_json
from mirai_lab.foresight.fit import configure
from mirai_lab.foresight.sources import load_gpt_weights
from mirai_lab.model.gpt import GPT
from mirai_lab.results_dir import CHECKPOINT, CONFIG, FINAL, cache_dir, run_dir
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.lock import claim_run
from mirai_lab.runs.tracking import log_done, tracked
from mirai_lab.training.build import model_shape
from mirai_lab.training.precision import resolved
from mirai_lab.training.progress import progress_display
from mirai_lab.training.trainer import Trainer


def execute(cfg: RunConfig, root: Path, progress: Callable[[int, int, dict[str, float]], None] | None = None,
            threads: int | None = None, variant: str | None = None, sweep: str | None = None,
            bar: bool = False) -> tuple[dict[str, Any], Path, bool]:
    """Train the run unless it is already done; returns (final, run dir, skipped). The selected
    tracker (runs/tracking.py) sees every step, curve row and the final metrics, named after
    `sweep` and `variant`; the progress display (training/progress.py) is a live bar when `bar`
    and stderr is a terminal, periodic lines when stderr is not one, nothing otherwise.
    A config whose precision is still "auto" (one train command) is resolved here, before its id."""

    cfg = resolved(cfg, root)
    run_id = run_id_of(cfg, world_size())
    path = run_dir(root, run_id)
    with claim_run(path) as final:  # one trainer per run on this machine (runs/lock.py)
        if final is not None:
            log_done(cfg, path, run_id, variant, sweep)
            return final, path, True
        with tracked(cfg, path, run_id, variant, sweep) as tracker, progress_display(run_id, bar) as display:
            final = Trainer(cfg, root, progress, threads, [*display, *tracker]).run()
    return final, path, False


def load_trained(run: str, root: Path) -> tuple[RunConfig, Any, Any]:
    """(config, EMA model, data) of a finished or checkpointed run."""


    cfg, path = load_run_config(root, run)
    ckpt = path / CHECKPOINT
    if not ckpt.exists():
        raise UserError(f"run {run!r} has no checkpoint yet ({ckpt})")
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    data = prepare_tokens(cfg.data, cfg.tokenizer, cache_dir(root))
    model = GPT(model_shape(cfg, data))
    try:
        load_gpt_weights(model, ckpt, prefer_ema=True)
    except CorruptFile as exc:
        raise UserError(str(exc)) from None
    return cfg, model.eval(), data


def eval_run(run: str, root: Path, n: int | None, extractor: str | None) -> dict[str, Any]:
    """Recompute the final metrics of a run into its own eval-n<count>[-<extractor>].json.

    final.json, samples.png and structure.png stay what training wrote, so `report` averages
    the same numbers after any eval."""

    cfg, model, data = load_trained(run, root)
    if n is not None:
        cfg.eval.n_samples_final = n
    if extractor is not None:
        cfg.eval.extractor = extractor
    _, path = load_run_config(root, run)
    try:
        old = read_json(path / FINAL) if (path / FINAL).exists() else {}
    except ValueError as exc:
        raise UserError(f"{path / FINAL} is not valid JSON ({exc}): the run's record is damaged; "
                        "delete the run folder and train it again") from None
    name = f"eval-n{cfg.eval.n_samples_final}" + ("" if cfg.eval.extractor == "domain" else f"-{cfg.eval.extractor}")
    # its sample grid and structure map go to a folder of the same name, beside the training's
    final = {**old, **Evaluator(cfg, data, cache_dir(root)).final(model, path / name, old.get("steps", 0)),
             "eval_file": str(path / f"{name}.json")}
    write_json(path / f"{name}.json", final)
    return final


def eval_floors(root: Path, set_items: list[str], n: int | None) -> dict[str, Any]:

    cfg = configure(None, parse_set(set_items))
    data = prepare_tokens(cfg.data, cfg.tokenizer, cache_dir(root))
    ev = Evaluator(cfg, data, cache_dir(root))
    count = n or cfg.eval.n_samples_final
    return {"n": count, "classifier_val_acc": ev.classifier.val_accuracy, **ev.floors(count)}


def load_run_config(root: Path, run: str) -> tuple[RunConfig, Path]:
    """Config of an existing run given its id or its directory."""

    path = Path(run)
    if not _is_file(path / CONFIG):
        path = run_dir(root, run)
    if not _is_file(path / CONFIG):
        raise UserError(f"run {run!r} not found (looked for {path / 'config.json'})")
    if root.resolve() not in path.resolve().parents:  # eval writes into the run folder: keep it in the results
        raise UserError(f"run folder {str(path)!r} is outside the results directory {str(root)!r}: pass "
                        "--results-dir, or the run id")
    try:
        d = read_json(path / CONFIG)
    except ValueError as exc:
        raise UserError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    d.pop("run_id", None)
    return config_from_dict(d), path


def _is_file(path: Path) -> bool:
    """Path.is_file that says False, not OSError, for a name the file system refuses (too long)."""
    try:
        return path.is_file()
    except OSError:
        return False
