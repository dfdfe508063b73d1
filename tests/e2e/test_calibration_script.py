"""benchmarks/calibration.py on bad input: one error line, exit code 2, no half-printed table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "calibration.py"


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "error: no sweep 'nosuch' in"),
    (["--halfwidth", "0", "nosuch"], "error: --halfwidth 0: expected a finite number > 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    ran = subprocess.run([sys.executable, str(SCRIPT), "--results-dir", str(tmp_path), *args],
                         capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert ran.returncode == 2
    assert ran.stdout == ""
    assert message in ran.stderr.splitlines()[-1] and "Traceback" not in ran.stderr
