"""The `mirai-lab` command line run inside the test process, and the bad-input contract.

A fresh `python -m mirai_lab` costs an interpreter start and the torch import (seconds of CPU
each). `main()` with a patched sys.argv runs the same parsing, validation, error handling and
exit codes, so the tests call it in-process. What a call may change in this process is put
back afterwards: sys.argv, the working directory, the environment (`--tracker` reaches the
sweep workers through it) and torch's thread count (a run sets it from train.threads).
`test_the_entry_point_refuses_bad_input_with_exit_2` (tests/e2e/test_train.py) still starts the
real entry point in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from mirai_lab.cli import main

# the smoke runs of the CLI tests: a small embedded data set and few samples (the caches these
# settings make are built once per session by the `small_cache` fixture of conftest.py)
SMALL = {"data.dataset": "synthetic", "tokenizer.codebook_size": 32, "eval.n_samples": 20,
         "eval.n_samples_final": 20}
SMALL_ARGS = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]


def tiny_spec(name: str, *, seeds: int, train: str, samples: int = 20, foresight: str = "{ k = 3, coef = 1.0 }",
              variants: str = 'ema = { foresight = { source = "ema" } }') -> str:
    """The experiment spec of the end-to-end tests: the synthetic set, the tiny model, no sample
    metrics, a baseline and `variants`; `train` is the [base] train table's inside."""
    return f"""[experiment]
name = "{name}"
budget = "smoke"
seeds = {seeds}
baseline = "baseline"

[base]
data = {{ dataset = "synthetic" }}
tokenizer = {{ codebook_size = 32, iters = 5 }}
model = {{ preset = "tiny" }}
train = {{ {train} }}
eval = {{ metrics = false, n_samples = {samples}, n_samples_final = {samples} }}
foresight = {foresight}

[axes.source]
baseline = {{ baseline = true }}
{variants}
"""


class Ran(NamedTuple):
    """What a command line gave: its exit code, its stdout and its stderr."""

    code: int
    out: str
    err: str


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    """A call still running after `seconds` is a hang: SIGALRM stops it (the main thread only)."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """os.environ plus `extra` for the block, then exactly what it was before."""
    saved = dict(os.environ)
    os.environ.update(extra)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def run_main(argv: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout_s: int = 900) -> Ran:
    """`mirai-lab ARGV` run in `cwd` inside this process, with `env` added to the environment."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd, threads = sys.argv, os.getcwd(), torch.get_num_threads()
    sys.argv = ["mirai-lab", *map(str, argv)]
    os.chdir(cwd)
    code = 0
    try:
        with _environment(env or {}), _alarm(timeout_s), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        torch.set_num_threads(threads)
    return Ran(code, out.getvalue(), err.getvalue())


def entries(folder: Path) -> set[str]:
    """Every path under `folder`, relative: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def refused(argv: list[str], cwd: Path, *, timeout_s: int = 120) -> str:
    """Run a bad command line in `cwd` and assert the CLI's promise for it: exit code 2, one line
    on stderr starting with "error: ", no traceback, nothing written under `cwd` (no file, no
    folder, no .lock). Returns that line, for the caller to check what it names."""
    before = entries(cwd)
    ran = run_main(argv, cwd, timeout_s=timeout_s)
    lines = [ln for ln in ran.err.splitlines() if ln.strip()]
    assert ran.code == 2, (argv, ran)
    assert "Traceback" not in ran.err, (argv, ran.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, ran.err)
    assert entries(cwd) == before, (argv, sorted(entries(cwd) - before))
    return lines[0]
