"""A built wheel, installed without the checkout on the path, runs an axis and a table from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (the checkout gets no build/ folder), installed into a target."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "mirai_lab", src / "mirai_lab", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("mirai_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    specs = "mirai_lab/experiments/specs"
    assert f"{specs}/table2.toml" in names and f"{specs}/axes/layout.toml" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=120)
    return tmp / "site"


def run_installed(site: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIRAI_LAB_RESULTS")}
    env.update(PYTHONPATH=str(site), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_wheel_runs_an_axis_and_a_table_from_another_folder(installed: Path, tmp_path: Path):
    where = run_installed(installed, tmp_path, "-c", "import mirai_lab.experiments.spec as s; print(s.SPECS_DIR)")
    assert where.stdout.strip().startswith(str(installed)), where.stdout + where.stderr  # not the checkout
    sweep = run_installed(installed, tmp_path, "-m", "mirai_lab", "sweep", "--axis", "layout", "--budget", "smoke",
                          "--seeds", "1", "--dry-run", "--json")
    assert sweep.returncode == 0, sweep.stderr
    out = json.loads(sweep.stdout)
    assert out["name"] == "layout-smoke-s1" and [r["variant"] for r in out["runs"]] == ["baseline", "1d", "2d"]
    table = run_installed(installed, tmp_path, "-m", "mirai_lab", "reproduce", "table2", "--budget", "smoke",
                          "--seeds", "1", "--dry-run")
    assert table.returncode == 0, table.stderr
    assert "mirai-e-s3-t2" in table.stdout
    assert "the report would go to results/table2-smoke-s1" in " ".join(table.stderr.split())
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing, not even ./results
