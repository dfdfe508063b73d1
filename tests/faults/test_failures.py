"""Divergence, corruption, untrusted files, disk full, bad input: exact expected states."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from cli_helpers import refused
from helpers import sweep_here, tree, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirai_lab.config import build_config
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.errors import UserError
from mirai_lab.experiments.spec import load_plan
from mirai_lab.files import atomic as store
from mirai_lab.files.tensors import CorruptFile, load_tensors
from mirai_lab.foresight.dinov2 import load_dinov2
from mirai_lab.report.write import write_report
from mirai_lab.training.faults import INJECT_NAN_ENV
from mirai_lab.training.trainer import Trainer

TINY = {"data.dataset": "synthetic", "tokenizer.codebook_size": 32, "tokenizer.iters": 5, "model.preset": "tiny",
        "train.steps": 12, "train.batch_size": 16, "train.eval_every": 6, "train.threads": 1,
        "eval.metrics": False, "eval.n_samples": 20, "eval.n_samples_final": 20}


@pytest.mark.slow
def test_diverged_run_is_failed_with_step_and_the_sweep_goes_on(tmp_path):
    """In-process sweeps (the fault is in the run, not in a process): a NaN loss at step 9 of one run."""
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    plan_ids = json.loads(sweep_here(spec, results, "--dry-run").out)["runs"]
    ema_id = next(r["run_id"] for r in plan_ids if r["variant"] == "ema")
    ran = sweep_here(spec, results, **{INJECT_NAN_ENV: f"{ema_id}:9"})
    assert ran.code == 0, ran.err
    out = json.loads(ran.out)
    assert (out["done"], out["failed"]) == (2, 1)
    status = json.loads((results / "runs" / ema_id / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 9 and "diverged" in status["error"]
    # the report lists it instead of dropping it
    report = write_report(results, ["faults"], tmp_path / "report", command="test").read_text()
    assert ema_id in report and "failed" in report
    # a rerun does not retry it, --retry-failed does (and it now succeeds)
    again = json.loads(sweep_here(spec, results).out)
    assert again["trained"] == 0 and again["failed"] == 1
    retried = json.loads(sweep_here(spec, results, "--retry-failed").out)
    assert (retried["done"], retried["failed"]) == (3, 0)


def test_truncated_checkpoint_restarts_from_scratch(tmp_path, capsys):
    cfg = build_config(None, TINY)
    first = Trainer(cfg, tmp_path)
    first.run()
    ckpt = first.dir / "checkpoint.pt"
    reference = torch.load(ckpt, weights_only=True)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated mid-write by something outside our control
    (first.dir / "status.json").write_text('{"state": "running"}')
    again = Trainer(cfg, tmp_path)
    final = again.run()
    assert "unreadable or truncated" in capsys.readouterr().err
    assert final["resumed"] is False
    redo = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(redo["model"][k], v) for k, v in reference["model"].items())


def test_corrupt_token_cache_is_rebuilt(tmp_path):
    cfg = build_config(None, TINY)
    data = prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)
    cache_file = next(tmp_path.glob("tokens-*.pt"))
    cache_file.write_bytes(b"garbage")
    again = prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)
    assert torch.equal(again.codes, data.codes)
    assert torch.load(cache_file, weights_only=True)["codes"].shape == data.codes.shape


def test_checkpoint_with_pickle_payload_is_refused(tmp_path):
    cfg = build_config(None, TINY)
    trainer = Trainer(cfg, tmp_path)
    trainer.run()

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Payload()}, trainer.dir / "checkpoint.pt")
    (trainer.dir / "status.json").write_text('{"state": "running"}')
    with pytest.raises(UserError, match="refusing to load"):
        Trainer(cfg, tmp_path).run()


def test_disk_full_keeps_previous_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "final.json"
    store.write_json(target, {"v": 1})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "replace", no_space)
    with pytest.raises(UserError, match="No space left on device; the previous version is kept"):
        store.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["final.json"]  # no temp file left behind


def test_disk_full_on_a_first_write_claims_no_previous_version(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "replace", no_space)
    with pytest.raises(UserError) as err:
        store.write_json(tmp_path / "final.json", {"v": 1})
    assert str(err.value).endswith("No space left on device") and "previous version" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_raw_pickle_is_one_clean_line_without_torch_advice(tmp_path, capfd):
    """A plain pickle (not torch's zip format) made torch warn about its protocol on stderr and
    the error line end with torch's advice to load it with weights_only=False."""
    path = tmp_path / "teacher.pt"
    path.write_bytes(pickle.dumps({"model": {1, 2}}, protocol=4))
    with pytest.raises(CorruptFile) as err:
        load_tensors(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "Unsupported operand" in message
    assert "weights_only" not in message and "Re-running" not in message
    assert capfd.readouterr().err == ""


def test_write_interrupted_mid_file_never_exposes_half_a_file(tmp_path):
    target = tmp_path / "curve.csv"
    store.write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with store.atomic_path(target) as tmp:
            tmp.write_text("half of the new con")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.csv"]


KEYS = ["train.steps", "train.lr", "train.batch_size", "model.preset", "foresight.source", "foresight.k",
        "foresight.layout", "foresight.student_block", "foresight.coef", "eval.top_p", "data.val_fraction",
        "train.bogus", "nosuch.key", "foresight.schedule"]
BAD_VALUES = {"train.steps": ["0", "-3", "x", "1.5"], "train.lr": ["0", "-1", "abc"],
              "train.batch_size": ["0", "many"], "model.preset": ["huge", ""],
              "foresight.source": ["future", "EMA"], "foresight.k": ["0", "k"], "foresight.layout": ["3d"],
              "foresight.student_block": ["99"], "foresight.coef": ["-2", "lots"], "eval.top_p": ["0", "1.5"],
              "data.val_fraction": ["0", "1", "2"], "train.bogus": ["1"], "nosuch.key": ["1"],
              "foresight.schedule": ["linear"]}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), data=st.data(), command=st.sampled_from(["train", "sweep"]))
def test_bad_overrides_exit_2_one_line_nothing_written(tmp_path, key, data, command):
    value = data.draw(st.sampled_from(BAD_VALUES[key]))
    before = tree(tmp_path)
    argv = [command, "--set", f"{key}={value}", "--results-dir", str(tmp_path / "results")]
    if command == "sweep":
        argv += ["--axis", "layout", "--budget", "smoke"]
    line = refused(argv, tmp_path)
    assert key.split(".")[-1] in line or key in line
    assert tree(tmp_path) == before


TOML_JUNK = st.sampled_from([
    "[experiment\nname='x'", "[experiment]\nseeds = 'three'", "[experiment]\nseeds = 0", "[unknown]\na=1",
    "[experiment]\nname='ok'\n[axes.a]\nv = 3", "[experiment]\nname='ok'\n[axes.a]\nv = { model = { dim = 'wide' } }",
    "[experiment]\nname='ok'\n[axes.a]\nv = { bogus = { x = 1 } }", "[experiment]\nname='ok'",
    "[experiment]\nname='ok'\nbaseline='nope'\n[axes.a]\nv = { train = { steps = 3 } }",
    "[experiment]\nname='bad name!'\n[axes.a]\nv = { train = { steps = 3 } }", "\x00\x01binary",
    "[experiment]\nname='ok'\n[base]\ntrain = { lr = -1 }\n[axes.a]\nv = { train = { steps = 3 } }",
])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TOML_JUNK, extra=st.sampled_from(["", "\n# comment\n"]))
def test_malformed_specs_exit_2(tmp_path, text, extra):
    spec = tmp_path / "spec.toml"
    spec.write_text(text + extra)
    refused(["sweep", "--experiment", str(spec), "--results-dir", str(tmp_path / "results")], tmp_path)


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["sweep"], ["sweep", "--axis", "layout", "--workers", "0"],
                                  ["tune", "--source", "nope"], ["bench", "--presets", "xl9"],
                                  ["sample", "missing-run"], ["eval"], ["report", "nosweep"]])
def test_bad_cli_options_exit_2(tmp_path, argv):
    refused([*argv, "--results-dir", str(tmp_path / "r")] if argv[0] != "bench" else argv, tmp_path)


def test_write_spec_helper_is_a_valid_sweep(tmp_path):
    plan = load_plan(write_spec(tmp_path))
    assert [r.variant for r in plan.runs] == ["baseline", "ema", "mtp"]


# --- security: weights folders are data, every write stays in the results directory -------------------------------

HOSTILE_HUBCONF = """
from pathlib import Path
Path(__file__).with_name("EXECUTED").write_text("code from a weights folder ran")
dependencies = ["torch"]

def dinov2_vitb14(pretrained=False):
    raise RuntimeError("never built")
"""


def test_hubconf_beside_the_weights_is_never_executed_unless_named(tmp_path, monkeypatch):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "hubconf.py").write_text(HOSTILE_HUBCONF)
    torch.save({"w": torch.zeros(1)}, folder / "x.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub-cache"))
    with pytest.raises(UserError) as err:
        load_dinov2(folder / "x.pth")
    assert "not run unless you name its folder" in str(err.value) and "\n" not in str(err.value)
    assert not (folder / "EXECUTED").exists()
    with pytest.raises(UserError, match="cannot build DINOv2 model"):  # named with --hub: the user's choice
        load_dinov2(folder / "x.pth", hub=folder)
    assert (folder / "EXECUTED").exists()


def _escape_cases(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    return [
        ["tune", "--budget", "smoke", "--objective", "val_nll", "--study", "../../x"],
        ["tune", "--budget", "smoke", "--objective", "val_nll", "--study", "/tmp/x"],
        ["sample", "../../x"],
        ["eval", "../runs/../../x"],
        ["eval", str(outside)],  # a run folder with a config.json outside the results directory
        ["sweep", "--axis", "layout", "--budget", "smoke", "--name", "../../x"],
    ]


def test_names_cannot_write_outside_the_results_directory(tmp_path):
    results = tmp_path / "nest" / "results"
    for argv in _escape_cases(tmp_path):
        before = tree(tmp_path)
        refused([*argv, "--results-dir", str(results)], tmp_path)
        assert tree(tmp_path) == before and not (tmp_path / "x").exists() and not results.exists(), argv


def test_pickle_refusal_is_one_line_that_names_the_file_and_why(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(UserError) as err:
        load_tensors(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "could run code" in message
    assert "system" in message and "weights_only" not in message


# --- files: the user's umask, no temporary files left by killed writers, fenced writes ------------------------------

def test_files_get_the_users_umask_not_0600(tmp_path):
    target = tmp_path / "status.json"
    store.write_json(target, {"state": "done"})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_temporary_files_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = store._HOST
    orphan = tmp_path / f".checkpoint.pt.{host}-{dead.stdout.strip()}.abc123.tmp"
    live = tmp_path / f".curve.csv.{host}-{os.getpid()}.def456.tmp"  # a writer still running (or frozen)
    foreign = tmp_path / f".final.json.otherhost-{dead.stdout.strip()}.ghi789.tmp"  # another machine's
    for p in (orphan, live, foreign):
        p.write_bytes(b"partial")
    store.write_text(tmp_path / "status.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, "status.json"])


def test_a_fence_that_refuses_stops_the_write_and_keeps_the_previous_file(tmp_path):
    class Lost(Exception):
        pass

    target = tmp_path / "run" / "curve.csv"
    store.write_text(target, "old\n")
    allowed = [True]

    def guard(path):
        if not allowed[0]:
            raise Lost(path.name)

    with store.fenced(tmp_path / "run", guard):
        store.write_text(target, "mine\n")
        allowed[0] = False
        with pytest.raises(Lost):
            store.write_text(target, "stale\n")
        allowed[0] = True
        with pytest.raises(Lost):  # refused at the rename too: the temporary file is dropped
            with store.atomic_path(target) as tmp:
                tmp.write_text("stale\n")
                allowed[0] = False
    store.write_text(tmp_path / "elsewhere.txt", "not fenced\n")
    assert target.read_text() == "mine\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["curve.csv"]
