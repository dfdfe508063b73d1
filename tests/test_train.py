"""End-to-end training on the smoke scale: run files, exact resume, foresight variants."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirai_lab.config import build_config
from mirai_lab.runs.store import load_tensors
from mirai_lab.training.trainer import Trainer

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args: str, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirai_lab", *args, "--results-dir", str(results)],
                          capture_output=True, text=True, env=ENV, timeout=600)


def curve_rows(path: Path) -> list[tuple]:
    with open(path) as fh:
        return [(r["step"], r["metric"], float(r["value"])) for r in csv.DictReader(fh)]


class Stop(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted(tmp_path, tiny_overrides):
    cfg = build_config(None, {**tiny_overrides, "foresight.source": "ema", "foresight.student_block": 2})
    full = Trainer(cfg, tmp_path / "a")
    full.run()

    def stop_at_first_eval(step, total, row):
        raise Stop

    with pytest.raises(Stop):
        Trainer(cfg, tmp_path / "b", progress=stop_at_first_eval).run()
    half = load_tensors(tmp_path / "b" / "runs" / full.run_id / "checkpoint.pt")
    assert half["step"] == 6
    resumed = Trainer(cfg, tmp_path / "b")
    final = resumed.run()
    assert final["resumed"] is True
    a = load_tensors(tmp_path / "a" / "runs" / full.run_id / "checkpoint.pt")
    b = load_tensors(tmp_path / "b" / "runs" / full.run_id / "checkpoint.pt")
    for key in ("model", "ema", "foresight"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    rows_a = curve_rows(tmp_path / "a" / "runs" / full.run_id / "curve.csv")
    rows_b = curve_rows(tmp_path / "b" / "runs" / full.run_id / "curve.csv")
    assert rows_a == rows_b and len(rows_a) > 0


@pytest.mark.parametrize("overrides", [
    {"foresight.source": "ema", "foresight.k": 3, "foresight.warmup_frac": 0.25, "foresight.schedule": "step"},
    {"foresight.source": "bidirectional", "foresight.encoder": "mtm", "foresight.k": 1},
    {"foresight.source": "bidirectional", "foresight.encoder": "pixel-ae", "foresight.visibility": "1"},
    {"foresight.injection": "mtp", "foresight.k": 3},
    {"foresight.source": "ema", "foresight.injection": "output", "foresight.layout": "1d"},
], ids=["mirai-e", "mirai-i-mtm", "mirai-i-pixel-ae-vis1", "mtp", "output-1d"])
def test_foresight_variants_log_per_head_curves(tmp_path, tiny_overrides, overrides, monkeypatch):
    import mirai_lab.foresight.encoders as enc

    monkeypatch.setitem(enc.ENCODER_SETTINGS, "steps", 5)  # the encoder's own quality is not under test here
    cfg = build_config(None, {**tiny_overrides, **overrides})
    trainer = Trainer(cfg, tmp_path)
    final = trainer.run()
    rows = curve_rows(trainer.dir / "curve.csv")
    metrics = {m for _, m, _ in rows}
    assert {"train_ntp", "val_nll"} <= metrics
    prefix = "mtp_loss_k" if overrides.get("foresight.injection") == "mtp" else "align_loss_k"
    assert {f"{prefix}{k}" for k in range(cfg.foresight.k)} <= metrics
    if prefix == "align_loss_k":
        assert {f"align_cos_k{k}" for k in range(cfg.foresight.k)} <= metrics
    # the sampled model is exactly the baseline architecture: no projector in the model state dict
    ckpt = load_tensors(trainer.dir / "checkpoint.pt")
    baseline = build_config(None, tiny_overrides)
    base_trainer = Trainer(baseline, tmp_path / "base")
    base_trainer.setup()
    assert {k: v.shape for k, v in ckpt["model"].items()} == \
        {k: v.shape for k, v in base_trainer.model.state_dict().items()}
    assert final["params"] == base_trainer.model.n_params()


@pytest.mark.slow
def test_cli_train_smoke_writes_run_files_and_skips_when_done(tmp_path):
    args = ["train", "--budget", "smoke", "--set", "data.dataset=synthetic", "--set", "tokenizer.codebook_size=32",
            "--set", "eval.n_samples=20", "--set", "eval.n_samples_final=20", "--json"]
    proc = cli(*args, results=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    run = Path(out["run_dir"])
    for name in ("config.json", "status.json", "curve.csv", "final.json", "samples.png", "checkpoint.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    nll = [v for _, m, v in curve_rows(run / "curve.csv") if m == "val_nll"]
    assert nll[-1] < nll[0]
    again = cli(*args, results=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] is True


@pytest.mark.parametrize("args, needle", [
    (["train", "--set", "train.stepz=3"], "unknown config key 'train.stepz'"),
    (["train", "--set", "train.steps=abc"], "train.steps='abc': expected an integer"),
    (["train", "--set", "foresight.source=ema", "--set", "foresight.student_block=9"], "expected 1..4"),
    (["train", "missing.toml"], "spec file 'missing.toml' does not exist"),
    (["train", "--budget", "huge"], "unknown budget 'huge'"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["sample", "nope"], "run 'nope' not found"),
    (["sweep", "--axis", "nope"], "--axis 'nope'"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, needle):
    results = tmp_path / "results"
    proc = cli(*args, results=results)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not results.exists()
