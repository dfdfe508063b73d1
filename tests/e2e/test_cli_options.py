"""Small CLI promises: --version, --json on every verb that reports, plan's table in a pipe,
prepare writing nothing on a refused input, the DataLoader's worker cap, the extras."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from cli_helpers import refused, run_main, tiny_spec

import mirai_lab
from mirai_lab.foresight import dinov2

ROOT = Path(__file__).resolve().parents[2]
SPEC = tiny_spec("opts", seeds=2, samples=8, train="steps = 2, batch_size = 8, eval_every = 2, val_every = 2, "
                 "threads = 1")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-variant, two-seed sweep of two steps per run."""
    folder = tmp_path_factory.mktemp("opts")
    (folder / "opts.toml").write_text(SPEC)
    ran = run_main(["sweep", "--experiment", folder / "opts.toml", "--results-dir", folder / "r", "--json"], folder)
    assert ran.code == 0, ran.err
    return folder


def test_version(tmp_path):
    ran = run_main(["--version"], tmp_path)
    assert (ran.code, ran.out.strip()) == (0, f"mirai-lab {mirai_lab.__version__}")


@pytest.mark.slow
def test_report_and_sample_say_what_they_wrote_in_json(swept, tmp_path):
    ran = run_main(["report", "opts", "--results-dir", swept / "r", "--out", tmp_path / "rep", "--json"], tmp_path)
    assert ran.code == 0, ran.err
    out = json.loads(ran.out)
    assert Path(out["report"]).is_file() and out["sweeps"] == ["opts"] and out["folder"] == str(tmp_path / "rep")
    manifest = json.loads((swept / "r" / "sweeps" / "opts" / "manifest.json").read_text())
    run_id = manifest["runs"][0]["run_id"]
    ran = run_main(["sample", run_id, "--n", "4", "--out", tmp_path / "s.png", "--results-dir", swept / "r",
                    "--json"], tmp_path)
    assert ran.code == 0, ran.err
    out = json.loads(ran.out)
    assert (out["run"], out["n"], out["seed"]) == (run_id, 4, 0) and Path(out["out"]).is_file()


@pytest.mark.slow
def test_plan_table_is_not_wrapped_in_a_pipe(swept, tmp_path):
    ran = run_main(["plan", "opts", "--results-dir", swept / "r"], tmp_path)
    assert ran.code == 0, ran.err
    table = [line for line in ran.out.splitlines() if line.startswith("|")]
    assert len(table) >= 3 and max(map(len, table)) > 80  # wider than a default console, and kept whole
    assert len({line.count("|") for line in table}) == 1


def test_reproduce_dry_run_json_keeps_stdout_for_the_json(tmp_path):
    ran = run_main(["reproduce", "table2", "--budget", "smoke", "--seeds", "1", "--dry-run", "--json",
                    "--results-dir", tmp_path / "r"], tmp_path)
    assert ran.code == 0, ran.err
    out = json.loads(ran.out)
    assert out["table"] == "table2" and out["dry_run"] is True and out["path"].startswith(str(tmp_path / "r"))


@pytest.mark.parametrize("sets, needle", [
    (["data.dataset=codes", "data.codes_dir=/nonexistent"], "codes folder '/nonexistent' does not exist"),
    (["data.codes_dir=/nonexistent"], "--set data.codes_dir=/nonexistent: not used by prepare"),
])
def test_prepare_refuses_a_bad_codes_folder_and_writes_nothing(tmp_path, sets, needle):
    argv = ["prepare", *[a for s in sets for a in ("--set", s)], "--results-dir", tmp_path / "results"]
    assert needle in refused(argv, tmp_path)


def test_dataloader_workers_are_capped_at_the_cores(monkeypatch):
    monkeypatch.setattr(dinov2.os, "cpu_count", lambda: 2)
    assert (dinov2.loader_workers(8), dinov2.loader_workers(1), dinov2.loader_workers(0)) == (2, 1, 0)


def test_extras_name_their_packages():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["dashboard"] == ["optuna-dashboard"] and extras["trackers"] == ["tensorboard", "wandb"]
