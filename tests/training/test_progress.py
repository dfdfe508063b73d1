"""Progress where a run is not in a terminal: plain, periodic, greppable lines (training/progress.py)."""

from __future__ import annotations

import json
import re

import pytest
from cli_helpers import SMALL_ARGS, refused, run_main

from mirai_lab.runs.tracking import StepView
from mirai_lab.training.progress import LOG_EVERY_ENV, ProgressLines, log_every_s, select_interval

LINE = re.compile(r"^progress: run (\S+) step (\d+)/(\d+) loss (\S+) lr (\S+) (\S+) steps/s eta (\d+s|\?)$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_interval_with_loss_lr_pace_and_eta():
    clock, lines, reads = FakeClock(), [], []
    hook = ProgressLines("abc123", 30.0, lines.append, clock)
    hook.on_start(0, 320)

    def loss() -> float:
        reads.append(1)
        return 2.3456

    for step in range(1, 321):
        clock.now += 0.5  # 2 steps/s
        hook.on_step(StepView(step, 320, 2e-3, loss))
    assert len(lines) == len(reads) == 5  # every 60 steps: the loss is read only for a line
    assert lines[1] == "progress: run abc123 step 120/320 loss 2.346 lr 2.0e-03 2 steps/s eta 100s"
    assert all(LINE.match(line) for line in lines)


def test_the_interval_is_checked_and_travels_in_the_environment(monkeypatch):
    monkeypatch.delenv(LOG_EVERY_ENV, raising=False)
    assert log_every_s() == 30.0
    select_interval(2.5)
    assert log_every_s() == 2.5
    monkeypatch.setenv(LOG_EVERY_ENV, "soon")
    with pytest.raises(Exception, match=r"\$MIRAI_LAB_LOG_EVERY_S='soon': expected a number of seconds >= 0"):
        log_every_s()


def test_a_negative_interval_is_refused(tmp_path):
    assert "--log-every-s" in refused(["train", "--log-every-s", "-1", "--results-dir", str(tmp_path / "r")], tmp_path)


@pytest.mark.slow
def test_a_redirected_train_writes_progress_lines(warm_results):
    ran = run_main(["train", "--budget", "smoke", *SMALL_ARGS, "--log-every-s", "0", "--json", "--results-dir",
                    str(warm_results)], warm_results)
    assert ran.code == 0, ran.err
    out = json.loads(ran.out)
    lines = [line for line in ran.err.splitlines() if line.startswith("progress:")]
    assert len(lines) == out["steps"]  # --log-every-s 0: every step
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert {m[1] for m in parsed} == {out["run_id"]}
    assert [int(m[2]) for m in parsed] == list(range(1, out["steps"] + 1))
    assert all(float(m[4]) > 0 for m in parsed)
