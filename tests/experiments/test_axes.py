"""The built-in axes answer at the calibrated budget: every axis spec is an adaptive sweep at
`quick` with a time cap that fits `sweep --axis NAME --workers 2` in about 45 minutes on 2 cores,
and its dry run says what it will train, at which budget and seeds, and for how long.

A spec may leave that default only with a `# reason: ...` comment saying why (checked here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import run_main

from mirai_lab.config import read_toml
from mirai_lab.experiments.adaptive import adaptive_options
from mirai_lab.experiments.spec import AXES, axis_spec_path, load_plan
from mirai_lab.experiments.sweep import write_manifest

FINISH_MINUTES = 45  # what `sweep --axis NAME --workers 2` should take on the 2-core development machine
REASON = re.compile(r"^# reason: \S.*", re.MULTILINE)


def dry_run(tmp_path: Path, *args: str) -> dict:
    ran = run_main(["sweep", *args, "--dry-run", "--json", "--results-dir", str(tmp_path / "results")], tmp_path)
    assert ran.code == 0, ran.err
    return json.loads(ran.out)


@pytest.mark.parametrize("axis", AXES)
def test_every_axis_is_adaptive_at_quick_with_a_time_cap_or_says_why_not(axis):
    path = axis_spec_path(axis)
    text, exp = path.read_text(), read_toml(path)["experiment"]
    header = text[:text.index("[experiment]")]
    assert "`quick`" in header and "`standard`" in header, "the header says where verdicts hold and what checks them"
    default = exp.get("budget") == "quick" and exp.get("adaptive") is True and "max_minutes" in exp
    if not default:
        assert REASON.search(text), f"{path.name}: not adaptive at quick with max_minutes, and no '# reason:' comment"
        return
    options = adaptive_options(path, adaptive=None, margin=None, max_seeds=None, max_minutes=None, seeds=None)
    assert options is not None and options.from_spec and options.first == 3
    assert 0 < options.max_minutes < FINISH_MINUTES  # the cap stops rounds by estimate: room for its error


@pytest.mark.parametrize("axis", AXES)
def test_the_dry_run_lists_runs_budget_looks_and_a_time_estimate(tmp_path, axis):
    spec = read_toml(axis_spec_path(axis))
    variants = [v for table in spec["axes"].values() for v in table]
    out = dry_run(tmp_path, "--axis", axis, "--workers", "2")
    assert out["name"] == axis and out["budget"] == spec["experiment"]["budget"]
    first = out["adaptive"]["looks_planned"][0]
    assert out["seeds"] == list(range(first)) and out["adaptive"]["looks_planned"] == [3, 5, 7, 9]
    assert [(r["variant"], r["seed"]) for r in out["runs"]] == [(v, s) for v in variants for s in range(first)]
    est = out["estimate"]
    assert est["seconds_per_run"] > 0 and "AMD EPYC" in est["source"] and est["workers"] == 2
    assert est["runs_to_train"] == len(out["runs"])
    assert est["minutes"] == pytest.approx(len(out["runs"]) * est["seconds_per_run"] / 2 / 60, abs=0.05)
    assert est["all_looks_runs_to_train"] == len(variants) * out["adaptive"]["max_seeds"]
    assert 0 < est["minutes"] <= est["at_most_minutes"] <= FINISH_MINUTES
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.json"))


def test_the_human_dry_run_says_the_looks_and_the_minutes(tmp_path):
    ran = run_main(["sweep", "--axis", "layout", "--workers", "2", "--dry-run", "--results-dir",
                    str(tmp_path / "results")], tmp_path)
    assert ran.code == 0, ran.err
    said = " ".join(ran.err.split())
    assert "9 run(s) to train x 91 s per run (quick constant" in said and "/ 2 worker(s) = about 6.8 min" in said
    assert "looks at 3, 5, 7, 9 seeds" in said and "at most 27 run(s) to train in all" in said
    assert "past 40 min" in said and "budget quick, 3 seed(s) (the first look)" in " ".join(ran.out.split())


def test_the_estimate_comes_from_finished_runs_when_there_are_some(tmp_path):
    first = dry_run(tmp_path, "--axis", "layout")
    done = tmp_path / "results" / "runs" / first["runs"][0]["run_id"]
    done.mkdir(parents=True)
    (done / "final.json").write_text(json.dumps({"wall_s": 120.0}))
    est = dry_run(tmp_path, "--axis", "layout")["estimate"]
    assert est["seconds_per_run"] == 120.0 and est["source"].startswith("median wall_s of 1 finished run")
    assert est["minutes"] == pytest.approx(9 * 120 / 60)  # --workers 1


def test_a_fixed_seed_dry_run_has_no_looks_and_scales_the_constant_with_the_steps(tmp_path):
    out = dry_run(tmp_path, "--axis", "k", "--seeds", "2", "--set", "train.steps=640")
    assert "adaptive" not in out and out["seeds"] == [0, 1] and out["budget"] == "quick"
    assert out["estimate"]["seconds_per_run"] == pytest.approx(182.0) and "scaled" in out["estimate"]["source"]


def test_an_adaptive_dry_run_accepts_its_own_later_rounds_and_refuses_another_sweep(tmp_path):
    root = tmp_path / "results"
    write_manifest(load_plan(axis_spec_path("layout"), seeds=5, name="layout"), root, "c")  # two looks made
    out = dry_run(tmp_path, "--axis", "layout")
    assert out["name"] == "layout" and len(out["runs"]) == 9
    write_manifest(load_plan(axis_spec_path("layout"), budget="smoke", seeds=3, name="other"), root, "c")
    ran = run_main(["sweep", "--axis", "layout", "--name", "other", "--dry-run", "--results-dir", str(root)], tmp_path)
    assert ran.code == 2 and "already exists with a different plan" in ran.err
