"""Shared pieces of the fault-injection suite: a small sweep spec and result snapshots."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from cli_helpers import Ran, run_main, tiny_spec

SPEC = tiny_spec("faults", seeds=1, train="steps = 24, batch_size = 16, eval_every = 6",
                 variants='ema = { foresight = { source = "ema" } }\nmtp = { foresight = { injection = "mtp" } }')


def write_spec(folder: Path, text: str = SPEC) -> Path:
    path = folder / "faults.toml"
    path.write_text(text)
    return path


# a sweep that shares a storage claims runs as one worker: one thread, and a 1 s heartbeat so that a dead
# or frozen worker's run passes to another within seconds
WORKER_OPTS = ("--threads", "1", "--heartbeat-s", "1")


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **extra}


def sweep_args(spec: Path, results: Path, *extra: str) -> list[str]:
    return ["sweep", "--experiment", str(spec), "--results-dir", str(results), "--json", *extra]


def sweep_cmd(spec: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mirai_lab", *sweep_args(spec, results, *extra)]


def run_sweep(spec: Path, results: Path, *extra: str, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(spec, results, *extra), capture_output=True, text=True, env=env(**env_extra),
                          timeout=900)


def sweep_here(spec: Path, results: Path, *extra: str, **env_extra: str) -> Ran:
    """The sweep of `run_sweep` in this process (tests/cli_helpers.py): where no process boundary
    is under test, it saves an interpreter start and the torch import."""
    return run_main(sweep_args(spec, results, *extra), spec.parent, env=env_extra)


def snapshot(results: Path) -> dict:
    """Everything a finished sweep promises, minus wall-clock fields and resume flags."""
    out: dict = {}
    manifest = json.loads((results / "sweeps" / "faults" / "manifest.json").read_text())
    out["manifest_runs"] = manifest["runs"]
    for run in manifest["runs"]:
        folder = results / "runs" / run["run_id"]
        with open(folder / "curve.csv") as fh:
            out[run["run_id"] + "/curve"] = [(r["step"], r["images_seen"], r["metric"], r["value"])
                                              for r in csv.DictReader(fh)]
        final = json.loads((folder / "final.json").read_text())
        out[run["run_id"] + "/final"] = {k: v for k, v in final.items() if k not in ("wall_s", "resumed")}
        out[run["run_id"] + "/status"] = json.loads((folder / "status.json").read_text())["state"]
    return out


def tree(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# A training process that SIGKILLs itself at a chosen moment: "step:N" right after the curve
# point of step N (and its checkpoint, at an eval step), "final" inside the final evaluation
# (its sample metrics computed, structure.png and final.json not yet written), "" never.
KILLED_RUN = r"""
import json, os, signal, sys
from pathlib import Path
from mirai_lab.config import build_config
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.training.trainer import Trainer

results, kill, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def at_step(step, total, row):
    if kill == f"step:{step}":
        die()

if kill == "final":
    Evaluator.structure = die
Trainer(build_config(None, overrides), Path(results), progress=at_step).run()
"""


def killed_run(results: Path, kill: str, overrides: dict) -> subprocess.CompletedProcess:
    """Train in a subprocess that is SIGKILLed at `kill` (see KILLED_RUN)."""
    return subprocess.run([sys.executable, "-c", KILLED_RUN, str(results), kill, json.dumps(overrides)],
                          capture_output=True, text=True, env=env(), timeout=300)
