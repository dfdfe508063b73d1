"""Sweep names say what a sweep holds; duplicate variants are named; provenance and stale runs;
`eval RUN` keeps final.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_main

from mirai_lab.config import read_toml
from mirai_lab.errors import UserError
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import axis_spec_path, load_plan, plan_from_spec
from mirai_lab.experiments.sweep import write_manifest
from mirai_lab.experiments.sweep_verb import check_name_free, run_sweep
from mirai_lab.files.atomic import write_json
from mirai_lab.runs import provenance as prov
from mirai_lab.runs.identity import COMPUTE_VERSION
from mirai_lab.training.run import eval_run

# one tiny variant: a sweep of it trains in seconds
TINY_SPEC = """
[experiment]
name = "tiny"
budget = "smoke"
seeds = 1

[base]
data = { dataset = "synthetic" }
tokenizer = { codebook_size = 32, iters = 5 }
model = { preset = "tiny" }
train = { steps = 2, batch_size = 8, eval_every = 2, threads = 1 }
eval = { metrics = false, n_samples = 8, n_samples_final = 8 }

[axes.v]
base = {}
"""


def sweep(spec: Path, root: Path, **kw) -> dict:
    return run_sweep(SweepRequest(spec=spec, command="mirai-lab sweep", **kw), root, as_json=True)


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPEC)
    return path


def test_names_say_budget_seeds_and_overrides():
    path = axis_spec_path("k")  # spec: budget quick, 3 seeds
    assert load_plan(path).name == "k"
    assert load_plan(path, budget="quick", seeds=3).name == "k"  # the spec's own values add nothing
    assert load_plan(path, budget="smoke").name == "k-smoke"
    assert load_plan(path, budget="smoke", seeds=1).name == "k-smoke-s1"
    a = load_plan(path, overrides={"foresight.coef": "0.5"}).name
    b = load_plan(path, overrides={"foresight.coef": "1.0"}).name
    assert a.startswith("k-set") and b.startswith("k-set") and a != b
    assert load_plan(path, budget="smoke", name="mine").name == "mine"  # explicit name kept as it is


def test_bad_name_is_one_line():
    with pytest.raises(UserError, match=r"--name 'a/b': expected letters, digits, - or _"):
        load_plan(axis_spec_path("k"), name="a/b")


def test_duplicate_variants_warn_once():
    spec = read_toml(axis_spec_path("layout"))
    assert plan_from_spec(spec, "layout.toml", budget="smoke").warnings == []  # the shipped axis has none
    spec["axes"]["layout"]["2d-wide"] = {"foresight": {"layout": "2d-wide"}}
    plan = plan_from_spec(spec, "layout.toml", budget="smoke", seeds=2)
    assert plan.warnings == ["warning: layout.toml: variant '2d-wide' resolves to the same configuration as '2d'; "
                             "both train the same model"]
    spec["base"]["foresight"]["k"] = 5  # down-left enters at K = 5: no longer a copy
    assert plan_from_spec(spec, "layout.toml", budget="smoke").warnings == []


def test_a_different_plan_under_an_existing_name_is_refused(tmp_path):
    path = axis_spec_path("k")
    write_manifest(load_plan(path, budget="smoke", seeds=2, name="mine"), tmp_path, "c")
    check_name_free(load_plan(path, budget="smoke", seeds=2, name="mine"), tmp_path)  # same plan
    check_name_free(load_plan(path, budget="smoke", seeds=3, name="mine"), tmp_path)  # more seeds only
    with pytest.raises(UserError, match=r"sweep 'mine' already exists with a different plan \(8 of its 8 runs"):
        check_name_free(load_plan(path, budget="quick", seeds=2, name="mine"), tmp_path)


@pytest.mark.slow
def test_two_sweeps_of_one_spec_keep_separate_manifests(tmp_path, tiny_spec):
    a = sweep(tiny_spec, tmp_path)
    b = sweep(tiny_spec, tmp_path, set_items=["train.lr=0.002"])
    c = sweep(tiny_spec, tmp_path, budget="quick", set_items=["train.steps=2", "model.preset=tiny"])
    assert a["name"] == "tiny" and b["name"].startswith("tiny-set") and c["name"].startswith("tiny-quick-set")
    manifests = {name: json.loads((tmp_path / "sweeps" / name / "manifest.json").read_text())
                 for name in (a["name"], b["name"], c["name"])}
    assert len({m["runs"][0]["run_id"] for m in manifests.values()}) == 3
    assert manifests[c["name"]]["budget"] == "quick"
    # every run recorded where it came from
    p = json.loads((tmp_path / "runs" / manifests["tiny"]["runs"][0]["run_id"] / "provenance.json").read_text())
    assert p["compute_version"] == COMPUTE_VERSION and p["threads"] == 1 and p["precision"] == "fp32"
    assert set(p) >= {"version", "torch", "python", "cpu", "cpu_matrix_extensions", "commit", "dirty"}


@pytest.mark.slow
def test_rerun_stale_retrains_runs_of_another_code_version(tmp_path, tiny_spec):
    assert sweep(tiny_spec, tmp_path)["trained"] == 1
    run_id = load_plan(tiny_spec).runs[0].run_id
    # eval RUN writes its own file and keeps what training wrote
    final = (tmp_path / "runs" / run_id / "final.json").read_bytes()
    out = eval_run(run_id, tmp_path, 12, None)
    assert out["n_samples_final"] == 12 and out["eval_file"] == str(tmp_path / "runs" / run_id / "eval-n12.json")
    assert json.loads(Path(out["eval_file"]).read_text())["n_samples_final"] == 12
    assert (tmp_path / "runs" / run_id / "final.json").read_bytes() == final
    p = tmp_path / "runs" / run_id / "provenance.json"
    write_json(p, {**json.loads(p.read_text()), "compute_version": COMPUTE_VERSION - 1})
    warning = prov.mixed_versions_warning(tmp_path, [run_id])
    assert warning is None  # one run, one version
    assert prov.is_stale(tmp_path, run_id)
    assert sweep(tiny_spec, tmp_path)["trained"] == 0  # stale runs are kept unless asked
    again = sweep(tiny_spec, tmp_path, rerun_stale=True)
    assert again["trained"] == 1 and not prov.is_stale(tmp_path, run_id)
    assert len(list((tmp_path / "stale").iterdir())) == 1  # the old run is set aside, not deleted


def test_mixed_code_versions_are_named(tmp_path):
    for run_id, version in (("a", COMPUTE_VERSION), ("b", COMPUTE_VERSION - 1)):
        write_json(tmp_path / "runs" / run_id / "provenance.json", {"compute_version": version, "version": "0.1.0"})
    (tmp_path / "runs" / "c").mkdir()  # a run from before provenance
    warning = prov.mixed_versions_warning(tmp_path, ["a", "b", "c", "missing"])
    assert warning.startswith(f"warning: the table mixes code versions (v{COMPUTE_VERSION} 0.1.0: 1 run(s), e.g. a; "
                              f"v{COMPUTE_VERSION - 1} 0.1.0: 1 run(s), e.g. b; unrecorded: 1 run(s), e.g. c)")
    assert prov.write_environment(tmp_path / "env", tmp_path, ["a"], note=1) is None
    env = json.loads((tmp_path / "env" / "environment.json").read_text())
    assert env["run_code_versions"] == {f"v{COMPUTE_VERSION} 0.1.0": 1} and env["note"] == 1


def test_cpu_matrix_extensions_from_cpuinfo():
    cpuinfo = "processor: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f amx_bf16 amx_tile\nprocessor: 1\n"
    assert prov.cpu_matrix_extensions(cpuinfo) == ["sse4_2", "avx", "avx2", "fma", "avx512f", "amx_tile", "amx_bf16"]
    assert prov.cpu_matrix_extensions("") == []
    info = prov.provenance(threads=3, precision="bf16")
    assert info["threads"] == 3 and info["precision"] == "bf16" and info["compute_version"] == COMPUTE_VERSION


def test_reproduce_dry_run_names_its_folder_on_one_line_as_given(tmp_path):
    # longer than any terminal line, with brackets that rich would read as a style tag
    root = tmp_path / "results [draft]" / ("long-name-" * 12)
    ran = run_main(["reproduce", "table2", "--budget", "smoke", "--dry-run", "--results-dir", str(root)], tmp_path)
    assert ran.code == 0, ran.err
    assert f"dry run: the report would go to {root / 'table2-smoke'}\n" in ran.err
    assert not root.exists() or not any(root.iterdir())


def test_the_command_line_starts_without_the_heavy_libraries():
    # `--help` and a refused option must not pay for what only some verbs use: together these
    # imports are most of the cost of `import mirai_lab.cli`
    heavy = ("torch._dynamo", "torchvision", "torch_fidelity", "sklearn", "scipy", "matplotlib", "pandas", "optuna",
             "mirai_lab.training.trainer")
    probe = f"import sys, mirai_lab.cli; print([m for m in {heavy!r} if m in sys.modules])"
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "[]"
