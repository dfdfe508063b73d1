"""Exact resume as a property: a run SIGKILLed anywhere, or handed a damaged checkpoint or curve,
ends bit-identical to an uninterrupted run; so does a run with a cold or a warm cache."""

from __future__ import annotations

import csv
import json
import shutil
import signal

import pytest
import torch
from helpers import killed_run

from mirai_lab.config import build_config
from mirai_lab.files.tensors import load_tensors
from mirai_lab.training.trainer import Trainer

pytestmark = pytest.mark.slow

# eval (checkpoint) every 6 steps, val_nll every 3, dropout and class dropout on: every stream in play
RUN = {"data.dataset": "synthetic", "tokenizer.codebook_size": 32, "tokenizer.iters": 5, "model.preset": "tiny",
       "model.class_dropout": 0.3, "train.steps": 18, "train.batch_size": 16, "train.eval_every": 6,
       "train.val_every": 3, "train.threads": 1, "eval.metrics": False, "eval.n_samples": 20,
       "eval.n_samples_final": 20, "foresight.source": "ema", "foresight.student_block": 2}


class Interrupted(Exception):
    pass


def outcome(trainer: Trainer) -> dict:
    """Weights, EMA, heads, optimizer state, curve and final metrics; no wall-clock fields."""
    ckpt = load_tensors(trainer.dir / "checkpoint.pt")
    with open(trainer.dir / "curve.csv") as fh:
        curve = [(r["step"], r["images_seen"], r["metric"], r["value"]) for r in csv.DictReader(fh)]
    final = json.loads((trainer.dir / "final.json").read_text())
    return {"tensors": {k: ckpt[k] for k in ("model", "ema", "foresight")}, "optimizer": ckpt["optimizer"],
            "step": ckpt["step"], "curve": curve,
            "final": {k: v for k, v in final.items() if k not in ("wall_s", "resumed")}}


def assert_identical(a: dict, b: dict, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    trainer = Trainer(build_config(None, RUN), tmp_path_factory.mktemp("clean"))
    trainer.run()
    return trainer, outcome(trainer)


@pytest.mark.parametrize("kill", ["step:6", "step:9", "final"],
                         ids=["after-first-checkpoint", "between-checkpoints", "in-final-evaluation"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted, kill):
    clean, expected = uninterrupted
    shutil.copytree(clean.root / "cache", tmp_path / "cache")  # the caches are tested below; here the run is
    proc = killed_run(tmp_path, kill, RUN)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "runs" / clean.run_id / "final.json").exists()
    resumed = Trainer(build_config(None, RUN), tmp_path)
    assert resumed.run()["resumed"] is True
    assert_identical(outcome(resumed), expected)


def test_cold_and_warm_cache_train_the_same_weights(tmp_path, uninterrupted):
    clean, expected = uninterrupted  # trained in a fresh results directory: every cache built
    warm = tmp_path / "warm"
    shutil.copytree(clean.root / "cache", warm / "cache")
    trainer = Trainer(build_config(None, RUN), warm)
    trainer.run()
    assert_identical(outcome(trainer), expected)


@pytest.mark.parametrize("damage", ["checkpoint", "curve"])
def test_one_flipped_byte_warns_once_and_restarts_to_the_same_end(tmp_path, uninterrupted, capsys, damage):
    clean, expected = uninterrupted
    shutil.copytree(clean.root / "cache", tmp_path / "cache")

    def stop(step, total, row):
        if step == 12:
            raise Interrupted

    with pytest.raises(Interrupted):  # stopped (in this process) right after the checkpoint of step 12
        Trainer(build_config(None, RUN), tmp_path, progress=stop).run()
    run = tmp_path / "runs" / clean.run_id
    path = run / ("checkpoint.pt" if damage == "checkpoint" else "curve.csv")
    data = bytearray(path.read_bytes())
    if damage == "checkpoint":
        at = len(data) // 2  # inside the tensor records
    else:
        at = data.index(b"val_nll,") + len("val_nll,") + 2  # a digit of the first val_nll
    data[at] = ord("7") if data[at] != ord("7") else ord("3")
    path.write_bytes(bytes(data))
    capsys.readouterr()
    trainer = Trainer(build_config(None, RUN), tmp_path)
    final = trainer.run()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: ") and "restarting run" in err[0], err
    assert final["resumed"] is False
    assert_identical(outcome(trainer), expected)
