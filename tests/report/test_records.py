"""report copies the sweep's records beside the report, with the results directory as the user gave it."""

from __future__ import annotations

import json
from pathlib import Path

from mirai_lab.report.records import as_given, copy_records, follow_ups


def _sweep(results: Path, name: str, files: dict[str, object]) -> None:
    folder = results / "sweeps" / name
    folder.mkdir(parents=True)
    for file, obj in files.items():
        (folder / file).write_text(json.dumps(obj))


def test_records_and_follow_ups_are_copied_without_machine_paths(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = Path("res")
    absolute = str(results.resolve())
    command = f"mirai-lab reproduce t --results-dir {absolute}"
    _sweep(results, "t", {"manifest.json": {"command": command}, "adaptive.json": {"looks": 2},
                          "timing.json": {"wall_s": 3.0},
                          "confirm.json": {"rows": {"a": {}}, "command": command},
                          "robust.json": {"settings": [{"name": "train.lr=0.5x", "sweep": "t-robust-train.lr=0.5x"}]}})
    _sweep(results, "t-confirm", {"manifest.json": {"command": command}, "timing.json": {"wall_s": 1.0},
                                  "journal.log": "not a record"})
    _sweep(results, "t-robust-train.lr=0.5x", {"manifest.json": {"n": 1}})
    assert follow_ups(results, "t") == {"confirm": "t-confirm", "robust-train.lr-0.5x": "t-robust-train.lr=0.5x"}

    assert copy_records(results, ["t"], Path("out")) == [Path("out")]
    copied = sorted(str(p.relative_to("out")) for p in Path("out").rglob("*") if p.is_file())
    assert copied == ["adaptive.json", "confirm.json", "confirm/manifest.json", "confirm/timing.json",
                      "manifest.json", "robust-train.lr-0.5x/manifest.json", "robust.json", "timing.json"]
    assert json.loads(Path("out/manifest.json").read_text())["command"] == "mirai-lab reproduce t --results-dir res"
    assert json.loads(Path("out/confirm/manifest.json").read_text())["command"].endswith("--results-dir res")
    assert not any(absolute in p.read_text() for p in Path("out").rglob("*.json"))


def test_no_follow_up_when_nothing_was_confirmed_and_several_sweeps_get_a_folder_each(tmp_path: Path):
    results = tmp_path / "res"
    _sweep(results, "a", {"manifest.json": {}, "confirm.json": {"rows": {}, "note": "no resolved row"}})
    _sweep(results, "b", {"manifest.json": {}})
    assert follow_ups(results, "a") == {}
    out = tmp_path / "out"
    assert copy_records(results, ["a", "b"], out) == [out / "a", out / "b"]
    assert sorted(p.name for p in (out / "a").iterdir()) == ["confirm.json", "manifest.json"]
    assert [p.name for p in (out / "b").iterdir()] == ["manifest.json"]


def test_as_given_writes_the_absolute_results_path_as_the_user_gave_it(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = f"`mirai-lab sweep --results-dir {tmp_path / 'res'}` and {tmp_path / 'other'}"
    assert as_given(text, Path("res")) == f"`mirai-lab sweep --results-dir res` and {tmp_path / 'other'}"
