"""A finished run whose record (final.json, curve.csv, status.json, config.json) is damaged is
never trusted: a sweep or a tuner makes it again (from its checkpoint when that can restore it)
after one warning line, and a report leaves its seed out of every row; never a traceback."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import run_main, tiny_spec
from conftest import TINY

from mirai_lab.analysis.collect import collect
from mirai_lab.config import build_config
from mirai_lab.files.atomic import write_json
from mirai_lab.runs.state import RunState, done_record, set_status
from mirai_lab.training.run import execute


def test_a_done_run_with_a_damaged_final_json_is_made_again(tmp_path, capsys):
    cfg = build_config(None, TINY)
    first, path, skipped = execute(cfg, tmp_path)
    assert not skipped
    (path / "final.json").write_text('{"val_nll": 2.1')  # cut mid-write by something outside our control
    capsys.readouterr()
    again, _, skipped = execute(cfg, tmp_path)
    err = capsys.readouterr().err
    assert not skipped and "final.json is damaged" in err and "Traceback" not in err
    assert again["val_nll"] == first["val_nll"]  # the same weights (from the checkpoint) measured again
    assert json.loads((path / "final.json").read_text())["val_nll"] == first["val_nll"]
    assert execute(cfg, tmp_path)[2]  # and now it is done again


def test_done_record_reads_only_a_sound_record_of_a_done_run(tmp_path, capsys):
    assert done_record(tmp_path) is None  # pending: no status.json
    set_status(tmp_path, RunState.DONE)
    assert done_record(tmp_path) is None  # done, final.json not written yet: still running
    write_json(tmp_path / "final.json", {"val_nll": 2.5})
    assert done_record(tmp_path) == {"val_nll": 2.5}
    assert capsys.readouterr().err == ""
    for damaged in ('{"val_nll": 2.', "[2.5]"):  # cut mid-write; valid JSON but not a record
        (tmp_path / "final.json").write_text(damaged)
        assert done_record(tmp_path) is None
        assert "final.json is damaged" in capsys.readouterr().err


# ---------------------------------------------------------------- every record file, through the CLI

SPEC = tiny_spec("damage", seeds=2, train="steps = 12, batch_size = 16, eval_every = 6")

FILES = ("final.json", "curve.csv", "status.json", "config.json")


def _damage(file: Path, how: str) -> None:
    text = file.read_text()
    if how == "truncated":  # as a copy or a disk cut short outside the toolkit's atomic writes
        file.write_text(text[: len(text) * 2 // 3])
    elif how == "garbage":
        file.write_bytes(b"\x00\xff\x13garbage\x80")
    else:
        file.write_text("")


def _record(run: Path) -> tuple[dict, list]:
    """What a run measured: final.json without its clock fields and the curve without wall times."""
    final = {k: v for k, v in json.loads((run / "final.json").read_text()).items() if k not in ("wall_s", "resumed")}
    with open(run / "curve.csv") as fh:
        curve = [(r["step"], r["metric"], r["value"]) for r in csv.DictReader(fh)]
    return final, curve


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A finished 2-variant x 2-seed sweep (its spec, results, and each run's record), made once."""
    folder = tmp_path_factory.mktemp("damage")
    spec = folder / "damage.toml"
    spec.write_text(SPEC)
    ran = run_main(["sweep", "--experiment", spec, "--results-dir", folder / "r", "--json"], folder)
    assert ran.code == 0, ran.err
    manifest = json.loads((folder / "r" / "sweeps" / "damage" / "manifest.json").read_text())
    return spec, folder / "r", {(r["variant"], r["seed"]): r["run_id"] for r in manifest["runs"]}


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("name", FILES)
def test_a_sweep_makes_a_damaged_run_again(swept, tmp_path, name, how):
    spec, clean, run_ids = swept
    results = tmp_path / "r"
    shutil.copytree(clean, results)
    run = results / "runs" / run_ids[("baseline", 0)]
    before = _record(run)
    _damage(run / name, how)
    ran = run_main(["sweep", "--experiment", spec, "--results-dir", results], tmp_path)
    assert ran.code == 0, ran.err
    assert "nothing to do" not in ran.err and "Traceback" not in ran.err
    warnings = _warnings(ran.err)
    assert len(warnings) == 1 and f"{run / name} is damaged" in warnings[0], ran.err
    assert "1 trained now" in ran.err
    assert _record(run) == before  # evaluated again (or retrained: deterministic) to the same numbers
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert json.loads((run / "config.json").read_text())["run_id"] == run.name
    for key in (k for k in run_ids.values() if k != run.name):  # the sound runs are untouched
        assert _record(results / "runs" / key) == _record(clean / "runs" / key)
    again = run_main(["sweep", "--experiment", spec, "--results-dir", results], tmp_path)
    assert again.code == 0 and "nothing to do, 4 runs already done" in again.err and not _warnings(again.err)
    assert not (results / "locks").exists()  # no lock file or folder stays behind


@pytest.mark.parametrize("name", FILES)
def test_a_report_leaves_the_seed_of_a_damaged_run_out_of_every_row(swept, tmp_path, name):
    _, clean, run_ids = swept
    results = tmp_path / "r"
    shutil.copytree(clean, results)
    run = results / "runs" / run_ids[("ema", 1)]
    _damage(run / name, "truncated")
    ran = run_main(["report", "damage", "--results-dir", results, "--out", tmp_path / "out"], tmp_path)
    assert ran.code == 0, ran.err
    warnings = _warnings(ran.err)
    assert len(warnings) == 1 and f"{run / name} is damaged" in warnings[0], ran.err
    assert "seed 1 of sweep damage left out of every row" in warnings[0]
    runs, _ = collect(results, ["damage"])
    states = runs.set_index(["variant", "seed"])["state"].to_dict()
    # the baseline of seed 1 is sound, but without its pair it would make the two means unpaired
    assert states == {("baseline", 0): "done", ("ema", 0): "done", ("baseline", 1): "excluded",
                      ("ema", 1): "damaged"}
    table = pd.read_csv(tmp_path / "out" / "table.csv").set_index("variant")
    assert table["n_done"].to_dict() == {"baseline": 1, "ema": 1}
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| `{run.name}` | ema | 1 | damaged |" in report
