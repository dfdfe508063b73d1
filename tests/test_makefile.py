"""The Makefile targets that README promises expand to the commands they stand for."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("table", ["1", "2", "3", "4"])
def test_reproduce_targets_run_the_reproduce_command(table: str):
    out = subprocess.run(["make", "-n", f"reproduce-table{table}", "BUDGET=smoke", "SEEDS=1", "RESULTS=/tmp/x"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f".venv/bin/mirai-lab reproduce table{table} --budget smoke --seeds 1 --workers 2 --results-dir /tmp/x" \
        in out.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_demo_and_test_targets():
    demo = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert ".venv/bin/mirai-lab train --budget quick" in demo.splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
