"""End-to-end training on the smoke scale: run files, exact resume, foresight variants."""

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from cli_helpers import SMALL_ARGS, refused, run_main

import mirai_lab.foresight.encoders as enc
from mirai_lab.config import build_config
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.files.tensors import load_tensors
from mirai_lab.runs.tracking import TrainingHook
from mirai_lab.training.progress import ProgressLines
from mirai_lab.training.trainer import Trainer

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


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


def weights(trainer: Trainer) -> dict:
    ckpt = load_tensors(trainer.dir / "checkpoint.pt")
    return {"model": ckpt["model"], "ema": ckpt["ema"], "optimizer": ckpt["optimizer"]["state"]}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same(a[key], b[key])
        else:
            assert torch.equal(a[key], b[key]), key


def test_weights_do_not_depend_on_evaluation_frequency_or_on_anyone_else_using_the_global_rng(
        tmp_path, tiny_overrides, monkeypatch):
    cfg = build_config(None, {**tiny_overrides, "foresight.source": "ema", "foresight.student_block": 2})
    plain = Trainer(cfg, tmp_path / "a")
    plain.run()
    in_training = Evaluator.in_training

    def noisy(self, model, step, samples=True):  # as a cache load or a library call between steps would
        torch.rand(1000)
        return in_training(self, model, step, samples)

    monkeypatch.setattr(Evaluator, "in_training", noisy)
    dense = build_config(None, {**tiny_overrides, "foresight.source": "ema", "foresight.student_block": 2,
                                "train.val_every": 1})
    other = Trainer(dense, tmp_path / "b")
    assert other.run_id == plain.run_id  # val_every is not part of the identity
    other.run()
    assert_same(weights(plain), weights(other))
    nll = [r for r in curve_rows(other.dir / "curve.csv") if r[1] == "val_nll"]
    assert [int(r[0]) for r in nll] == list(range(1, 13))  # dense val_nll, one point a step


def test_paired_variants_share_initial_weights_masks_and_the_first_ntp_loss(tmp_path, tiny_overrides):
    """A foresight variant sees the baseline's model init, batches, class-dropout and dropout masks."""
    noisy = {**tiny_overrides, "model.class_dropout": 0.5, "model.token_dropout": 0.2, "model.resid_dropout": 0.2}
    trainers = [Trainer(build_config(None, {**noisy, **extra}), tmp_path)
                for extra in ({}, {"foresight.source": "ema", "foresight.student_block": 2, "foresight.coef": 5.0})]
    seen: list[list[torch.Tensor]] = [[], []]
    for i, tr in enumerate(trainers):
        tr.setup()
        table = tr.model.cls_embedding.embedding_table
        table.register_forward_hook(lambda mod, args, out, i=i: seen[i].append(args[0].clone()))
    assert_same(trainers[0].model.state_dict(), trainers[1].model.state_dict())
    states = [[], []]
    for step in range(3):
        for i, tr in enumerate(trainers):
            tr.train_step(step)
            states[i].append(tr.noise.generators["dropout"].get_state())
        if step == 0:  # the foresight term changes the gradient, not the forward of the first step
            assert torch.equal(trainers[0].log_sums["train_ntp"], trainers[1].log_sums["train_ntp"])
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))  # class-dropout masks
    null = trainers[0].data.num_classes
    assert any((labels == null).any() for labels in seen[0])  # class dropout did drop
    assert all(torch.equal(a, b) for a, b in zip(states[0], states[1], strict=True))  # dropout draws


def device_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The list that every read of a tensor's value from project code is appended to from now on."""
    reads: list[str] = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not caller.startswith("torch"):
                reads.append(f"{name} from {caller}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__", "__format__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    return reads


def test_the_step_never_reads_a_value_back_from_the_device(tmp_path, tiny_overrides, monkeypatch):
    """No .item(), float(), bool(), int(), tolist() from project code between evaluations; torch's own
    CPU-side bookkeeping (AdamW's step counter) is not a device read and is let through."""
    cfg = build_config(None, {**tiny_overrides, "foresight.source": "ema", "foresight.student_block": 2,
                              "train.grad_accum": 2})
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    reads = device_reads(monkeypatch)
    for step in range(3):
        trainer.train_step(step)
    assert reads == []
    bool(torch.ones(()))  # the spy sees a read from outside torch
    assert reads == [f"__bool__ from {__name__}"]


def test_progress_and_tracker_hooks_read_the_device_once_per_point_not_per_step(tmp_path, tiny_overrides,
                                                                                monkeypatch):
    """The hooks of a display and a tracker keep the step free of device reads; the per-step values
    come back in one read, equal to the losses the curve averages."""
    cfg = build_config(None, {**tiny_overrides, "foresight.source": "ema", "foresight.student_block": 2,
                              "train.grad_accum": 2})
    lines: list[str] = []
    tracker = TrainingHook()
    tracker.wants_steps = True
    trainer = Trainer(cfg, tmp_path, hooks=[ProgressLines("r", 1e9, lines.append), tracker])
    trainer.setup()
    reads = device_reads(monkeypatch)
    for step in range(3):
        trainer.train_step(step)
        trainer.step = step + 1
        trainer.after_step()
    assert reads == [] and lines == []
    steps = trainer.read_step_logs()
    assert reads == ["tolist from mirai_lab.training.trainer"]  # one transfer for every value of the three steps
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert set(steps[0]) >= {"loss", "train_ntp", "align_loss_k0", "grad_norm", "lr", "lambda_scale", "steps_per_s",
                             "tokens_per_s"}
    assert sum(s["train_ntp"] for s in steps) == pytest.approx(trainer.read_logs()["train_ntp"] * 3, rel=1e-5)
    assert trainer.read_step_logs() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_step_has_no_synchronisation(tmp_path, tiny_overrides):
    cfg = build_config(None, {**tiny_overrides, "foresight.source": "ema", "foresight.student_block": 2})
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    trainer.train_step(0)  # first step: lazy allocations and kernel selection
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            trainer.train_step(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("in_training", [True, False])
def test_the_last_curve_point_is_the_final_evaluation(tmp_path, tiny_overrides, monkeypatch, in_training):
    """C1: the curve ends at final.json's sample metrics (eval.n_samples_final), with n_samples rows;
    with eval.metrics_in_training=false the eval points in between log val_nll only."""
    def sample_metrics(self, images, labels):
        return {"fid_domain": float(images.mean()) * 100 + len(images), "class_acc": 0.5}

    monkeypatch.setattr(Evaluator, "sample_metrics", sample_metrics)
    monkeypatch.setattr(Evaluator, "floors", lambda self, n: {})
    monkeypatch.setattr(Evaluator, "classifier", property(lambda self: types.SimpleNamespace(val_accuracy=1.0)))
    scored: list[float] = []
    val_nll = Evaluator.val_nll
    monkeypatch.setattr(Evaluator, "val_nll", lambda self, model: scored.append(val_nll(self, model)) or scored[-1])
    cfg = build_config(None, {**tiny_overrides, "eval.metrics": True, "eval.n_samples": 8, "eval.n_samples_final": 20,
                              "train.val_every": 3, "eval.metrics_in_training": in_training})
    trainer = Trainer(cfg, tmp_path)
    final = trainer.run()
    # one val_nll per curve point: the final evaluation takes the last point's (same EMA, same step)
    assert len(scored) == 4 and final["val_nll"] == scored[-1]
    rows = curve_rows(trainer.dir / "curve.csv")
    by_step: dict[int, dict[str, float]] = {}
    for step, metric, value in rows:
        by_step.setdefault(int(step), {})[metric] = value
    assert sorted(by_step) == [3, 6, 9, 12]
    assert set(by_step[3]) == set(by_step[9]) == {"train_ntp", "val_nll"}
    if in_training:
        assert by_step[6]["n_samples"] == 8 and "fid_domain" in by_step[6]
    else:
        assert set(by_step[6]) == {"train_ntp", "val_nll"}
    last = by_step[12]
    assert last["n_samples"] == 20 == final["n_samples_final"]
    assert (last["fid_domain"], last["class_acc"], last["val_nll"]) == \
        (final["fid_domain"], final["class_acc"], final["val_nll"])
    assert [m for s, m, _ in rows if int(s) == 12].count("fid_domain") == 1  # replaced, not logged twice


@pytest.mark.parametrize("overrides", [
    {"foresight.source": "ema", "foresight.k": 3, "foresight.warmup_frac": 0.25, "foresight.schedule": "step"},
    {"foresight.source": "bidirectional", "foresight.encoder": "mtm", "foresight.k": 1},
    {"foresight.source": "bidirectional", "foresight.encoder": "pixel-ae", "foresight.visibility": "1"},
    {"foresight.injection": "mtp", "foresight.k": 3},
    {"foresight.source": "ema", "foresight.injection": "output", "foresight.layout": "1d"},
], ids=["mirai-e", "mirai-i-mtm", "mirai-i-pixel-ae-vis1", "mtp", "output-1d"])
def test_foresight_variants_log_per_head_curves(tmp_path, tiny_overrides, overrides, monkeypatch):
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
    # a Mirai-I run reports its source's own quality beside its results; the others do not
    quality = {k for k in final if k.startswith("encoder_")}
    if cfg.foresight.source == "bidirectional":
        score = "encoder_mask_acc" if cfg.foresight.encoder == "mtm" else "encoder_mask_mse"
        assert quality == {score, score + ("_majority" if score.endswith("acc") else "_mean"), "encoder_probe_acc",
                           "encoder_probe_chance"}
        assert 0.0 <= final["encoder_probe_acc"] <= 1.0
    else:
        assert not quality
    # the sampled model is exactly the baseline architecture: no projector in the model state dict
    ckpt = load_tensors(trainer.dir / "checkpoint.pt")
    baseline = build_config(None, tiny_overrides)
    base_trainer = Trainer(baseline, tmp_path / "base")
    base_trainer.setup()
    assert {k: v.shape for k, v in ckpt["model"].items()} == \
        {k: v.shape for k, v in base_trainer.model.state_dict().items()}
    assert final["params"] == base_trainer.model.n_params()


@pytest.mark.slow
def test_cli_train_smoke_writes_run_files_and_skips_when_done(warm_results):
    args = ["train", "--budget", "smoke", *SMALL_ARGS, "--json", "--results-dir", str(warm_results)]
    ran = run_main(args, warm_results)
    assert ran.code == 0, ran.err
    out = json.loads(ran.out)
    run = Path(out["run_dir"])
    for name in ("config.json", "status.json", "curve.csv", "final.json", "samples.png", "checkpoint.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    nll = [v for _, m, v in curve_rows(run / "curve.csv") if m == "val_nll"]
    assert nll[-1] < nll[0]
    again = run_main(args, warm_results)
    assert again.code == 0 and json.loads(again.out)["skipped"] is True


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
    assert needle in refused([*args, "--results-dir", str(tmp_path / "results")], tmp_path)


def test_the_entry_point_refuses_bad_input_with_exit_2(tmp_path):
    """The bad-input promise through a real `python -m mirai_lab` process (the other bad-input
    tests call `main()` in-process: tests/cli_helpers.py)."""
    proc = subprocess.run([sys.executable, "-m", "mirai_lab", "train", "--set", "train.stepz=3", "--results-dir",
                           str(tmp_path / "results")], cwd=tmp_path, capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'train.stepz'"), proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_compiled_mirai_e_step_equals_the_eager_step(tmp_path, tiny_overrides, monkeypatch):
    """train.compile with the online EMA teacher: the teacher's targets enter the compiled step,
    which saves its inputs for the backward (inference-mode tensors could not be saved). AOT
    autograd's partitioner is where that rule bites; this backend runs it without inductor's
    code generation, so the test stays quick."""
    import functools

    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager_decomp_partition"))
    ema = {**tiny_overrides, "foresight.source": "ema", "foresight.k": 3, "foresight.coef": 5.0}
    trainers = [Trainer(build_config(None, {**ema, "train.compile": compiled}), tmp_path / str(compiled))
                for compiled in (False, True)]
    for tr in trainers:
        tr.setup()
        for step in range(2):
            tr.train_step(step)
    for name, p in trainers[0].model.named_parameters():
        torch.testing.assert_close(dict(trainers[1].model.named_parameters())[name], p, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()
