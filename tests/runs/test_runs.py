"""A run as a stored object: states shared by every sweep, verified files, checkpoint schema, identity."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import TINY

from mirai_lab.config import build_config
from mirai_lab.errors import CorruptFile
from mirai_lab.experiments import sweep
from mirai_lab.experiments.spec import load_plan
from mirai_lab.files.tensors import load_tensors, save_tensors
from mirai_lab.results_dir import run_dir
from mirai_lab.runs.checkpoint import load_resume
from mirai_lab.runs.curve import Curve
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.state import RunState, run_state, set_status
from mirai_lab.training.trainer import Trainer

SPEC = """
[experiment]
name = "pruned"
budget = "smoke"
seeds = 1
baseline = "baseline"

[base]
data = { dataset = "synthetic" }

[axes.source]
baseline = { baseline = true }
ema = { foresight = { source = "ema" } }
"""


class QuietMonitor:
    def current(self, run_id: str) -> None:
        pass

    def on_eval(self, run_id: str) -> None:
        return None

    def refresh(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["sequential", "worker"])
def test_a_pruned_run_is_skipped_by_sequential_and_worker_sweeps_alike(tmp_path, monkeypatch, mode):
    spec = tmp_path / "pruned.toml"
    spec.write_text(SPEC)
    plan = load_plan(spec)
    pruned, pending = (r.run_id for r in plan.runs)
    set_status(run_dir(tmp_path, pruned), RunState.PRUNED)
    trained: list[str] = []
    monkeypatch.setattr(sweep, "execute", lambda cfg, *args, **kwargs: trained.append(run_id_of(cfg)))
    if mode == "sequential":
        sweep.run_sequential(plan, tmp_path, retry_failed=False, monitor=QuietMonitor())
    else:
        assert sweep.worker_loop(plan, tmp_path, None, retry_failed=False, threads=1) == 1
    assert trained == [pending]
    assert run_state(run_dir(tmp_path, pruned)) is RunState.PRUNED


def test_save_tensors_verifies_itself_and_foreign_files_load_unchecked(tmp_path):
    path = tmp_path / "x.pt"
    save_tensors(path, {"w": torch.arange(1000, dtype=torch.float32), "n": 3})
    assert load_tensors(path, checked=True)["n"] == 3  # the checksum entry is removed
    data = bytearray(path.read_bytes())
    at = bytes(data).index(torch.arange(1000, dtype=torch.float32)[500:502].numpy().tobytes())
    data[at] ^= 1  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match="fails its checksum"):
        load_tensors(path)
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "llamagen.pt")  # someone else's checkpoint
    assert torch.equal(load_tensors(tmp_path / "llamagen.pt")["model"]["w"], torch.ones(2))
    with pytest.raises(CorruptFile, match="has no checksum"):
        load_tensors(tmp_path / "llamagen.pt", checked=True)


def test_curve_round_trips_and_garbage_is_corrupt(tmp_path):
    curve = Curve("r1")
    curve.add(6, 96, 1.23456, {"val_nll": 2.0 / 3.0, "train_ntp": 1e-9})
    curve.save(tmp_path / "curve.csv")
    loaded = Curve.load(tmp_path / "curve.csv", "r1")
    assert loaded.rows == [("r1", 6, 96, 1.235, "train_ntp", 1e-9), ("r1", 6, 96, 1.235, "val_nll", 2.0 / 3.0)]
    assert loaded.digest() == curve.digest()
    for text in ("step,metric\n1,x\n", "run_id,step,images_seen,wall_s,metric,value\nr1,six,1,1,a,1\n",
                 "run_id,step,images_seen,wall_s,metric,value\nr2,6,1,1,a,1\n", "\x00\xff\xfe"):
        (tmp_path / "bad.csv").write_bytes(text.encode("latin-1"))
        with pytest.raises(CorruptFile, match="is not a curve of run r1"):
            Curve.load(tmp_path / "bad.csv", "r1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trainer:
    cfg = build_config(None, {**TINY, "foresight.source": "ema", "foresight.student_block": 2,
                              "train.steps": 6, "train.eval_every": 3})
    trainer = Trainer(cfg, tmp_path_factory.mktemp("trained"))
    trainer.run()
    return trainer


def fresh(trained: Trainer) -> Trainer:
    other = Trainer(trained.cfg, trained.root)
    other.setup()
    return other


def resume_of(trainer: Trainer):
    return load_resume(trainer.dir, trainer.run_id, trainer.checkpoint_state(), trainer.opt, trainer.cfg.train.steps)


def test_checkpoint_schema_accepts_its_own_run(trained):
    resume = resume_of(fresh(trained))
    assert resume.state["step"] == 6 and len(resume.curve.rows) == resume.state["curve_rows"]
    # the final evaluation's rows came after the checkpoint: they are dropped, and recomputed on resume
    assert len(Curve.load(trained.dir / "curve.csv", trained.run_id).rows) >= len(resume.curve.rows)


@pytest.mark.parametrize("damage, needle", [
    (lambda s: s["model"].pop("norm.weight"), "missing keys"),
    (lambda s: s["ema"].__setitem__("norm.weight", torch.zeros(3)),
     r"ema.norm.weight: expected a \(32,\) torch.float32 tensor, got \(3,\)"),
    (lambda s: s.__setitem__("step", 99), "step 99 or curve_rows"),
    (lambda s: s.__setitem__("config_hash", "other"), "belongs to run 'other'"),
    (lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(1)), "optimizer state 0"),
    (lambda s: s.__setitem__("curve_rows", s["curve_rows"] + 1000), "does not match the checkpoint"),
], ids=["missing-key", "shape", "step", "other-run", "optimizer", "curve"])
def test_checkpoint_that_does_not_fit_the_run_is_corrupt(trained, tmp_path, damage, needle):
    copy = Trainer(trained.cfg, tmp_path)
    shutil.copytree(trained.dir, copy.dir)
    state = load_tensors(copy.dir / "checkpoint.pt")
    damage(state)
    save_tensors(copy.dir / "checkpoint.pt", state)  # a valid, verified file with the wrong content
    copy.setup()
    with pytest.raises(CorruptFile, match=needle):
        resume_of(copy)


def test_run_ids_leave_out_val_every_and_compile():
    base = build_config(None, {"data.dataset": "synthetic"})
    assert run_id_of(base) == run_id_of(build_config(None, {"data.dataset": "synthetic", "train.val_every": 7,
                                                            "train.compile": True, "train.threads": 1}))
    assert run_id_of(base) != run_id_of(build_config(None, {"data.dataset": "synthetic", "train.eval_every": 7}))


def test_run_ids_are_pinned_at_this_compute_version():
    """An id changes only with what the run computes: a change of these values without a
    COMPUTE_VERSION bump would silently orphan every stored run (or reuse one computed otherwise)."""
    assert run_id_of(build_config(None, {"data.dataset": "synthetic"})) == "c2071bbb8baf"
    off = build_config(None, {"data.dataset": "synthetic", "eval.metrics_in_training": False})
    assert run_id_of(off) != "c2071bbb8baf"


def test_dirty_means_the_code_changed_not_a_results_file(tmp_path, monkeypatch):
    """A report rewriting a committed results folder must not mark the runs trained after it as
    made by uncommitted code; a changed package file must."""
    import subprocess

    from mirai_lab.runs import provenance

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "mirai_lab").mkdir()
    (tmp_path / "results").mkdir()
    for name, text in (("pyproject.toml", "[project]\n"), ("mirai_lab/code.py", "x = 1\n"),
                       ("results/table.md", "a\n")):
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path / "mirai_lab")
    assert provenance.git_state(tmp_path / "mirai_lab")["dirty"] is False
    (tmp_path / "results" / "table.md").write_text("b\n")
    assert provenance.git_state(tmp_path / "mirai_lab")["dirty"] is False
    (tmp_path / "mirai_lab" / "code.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path / "mirai_lab")["dirty"] is True
