"""The results directory: where every run, sweep and cache lives, and the names that keep it safe.

    <results>/runs/<run_id>/{config.json,status.json,curve.csv,final.json,provenance.json,
                             samples.png,structure.png,checkpoint.pt}
    <results>/sweeps/<name>/{manifest.json,adaptive.json,confirm.json,robust.json,journal.log,
                             worker-<i>.log}
    <results>/cache/<kind>-<hash>.<ext>     tokenizer, token codes, classifiers, encoders, features
    <results>/studies/<study>.{db,journal}  tune studies
    <results>/stale/<run_id>-<time>/        runs of an older code version set aside (--rerun-stale)
    <results>/{locks,reports,tuned,bench}/  run locks, reports, tuned specs, benchmarks

Every folder and file name under the results directory is spelled here, and every name that
becomes a path component goes through `safe_name`, so no run id, sweep or study name can climb
out of it. It sits in the base layer: caches (data), static teachers (foresight) and runs all
live under it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from mirai_lab.errors import UserError

RESULTS_ENV = "MIRAI_LAB_RESULTS"

# the files of a run folder
CONFIG, STATUS, CURVE, FINAL = "config.json", "status.json", "curve.csv", "final.json"
CHECKPOINT, PROVENANCE, SAMPLES, STRUCTURE = "checkpoint.pt", "provenance.json", "samples.png", "structure.png"
# the files of a sweep folder
MANIFEST, ADAPTIVE, JOURNAL, CONFIRM = "manifest.json", "adaptive.json", "journal.log", "confirm.json"
ROBUST = "robust.json"  # robustness of a sweep's verdicts at neighbouring settings (experiments/robust.py)
TIMING = "timing.json"  # in a sweep folder: where its commands' time went (experiments/timing_record.py)
CLAIM = "claim.txt"  # in a run folder: the token of the worker that holds the run (a fence for its writes)
TENSORBOARD = "tensorboard"  # in a run folder: the TensorBoard event files
LOCKS = "locks"  # <results>/locks/<run_id>.lock: one trainer per run (runs/lock.py)


def worker_log(folder: Path, index: int) -> Path:
    """A sweep worker's stderr, beside the manifest."""
    return Path(folder) / f"worker-{index}.log"


def worker_timing(folder: Path, index: int) -> Path:
    """A sweep worker's time ledger, written when it exits, beside its log."""
    return Path(folder) / f"worker-{index}.timing.json"


def reports_dir(root: Path) -> Path:
    return Path(root) / "reports"


def tuned_dir(root: Path) -> Path:
    return Path(root) / "tuned"


def bench_dir(root: Path) -> Path:
    return Path(root) / "bench"

PSEUDO_FILE_SYSTEMS = ("/proc", "/sys", "/dev")  # kernel interfaces, never a place for results

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,199}")

def results_root(explicit: str | Path | None = None) -> Path:
    """The results directory: explicit option, then $MIRAI_LAB_RESULTS, then ./results.

    Checked before anything is written, so that an unusable one is one line, not a traceback
    halfway through a run."""
    root = Path(explicit) if explicit else Path(os.environ.get(RESULTS_ENV) or "results")
    check_results_dir(root)
    return root

def check_results_dir(root: Path) -> None:
    """Raise UserError unless `root` is, or can be created as, a writable directory."""
    where = f"results directory {str(root)!r}"
    resolved = root.resolve()
    for pseudo in map(Path, PSEUDO_FILE_SYSTEMS):
        if resolved == pseudo or pseudo in resolved.parents:
            raise UserError(f"{where} is inside {pseudo}, a kernel file system: expected an ordinary directory")
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == resolved else f"lies under the file {str(existing)!r}"
        raise UserError(f"{where} {what}: expected a directory")
    writable_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    # the mode bits too: root passes os.access everywhere, but a folder nobody may write is read-only on purpose
    if (os.statvfs(existing).f_flag & os.ST_RDONLY or not os.access(existing, os.W_OK | os.X_OK)
            or not existing.stat().st_mode & writable_bits):
        at = "" if existing == resolved else f" (its parent {str(existing)!r})"
        raise UserError(f"{where}{at} is read-only: expected a writable directory")

def safe_name(name: str, what: str) -> str:
    """A name that becomes one path component under the results directory (run id, sweep,
    study): letters, digits and _ . + = -, not starting with a dot, so it can never climb out."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"{what} {name!r}: expected a plain name (letters, digits, _ . + = -; no '/' and no "
                        "leading '.'), at most 200 characters")
    return name

def cache_dir(root: Path, create: bool = True) -> Path:
    """<root>/cache; create=False for a caller whose cache writes make it (they make their parents),
    so that an input refused before the first write leaves no empty folder."""
    path = Path(root) / "cache"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path

def runs_dir(root: Path) -> Path:
    return Path(root) / "runs"


def run_dir(root: Path, run_id: str) -> Path:
    return runs_dir(root) / safe_name(run_id, "run id")


def sweeps_dir(root: Path) -> Path:
    return Path(root) / "sweeps"


def sweep_dir(root: Path, name: str) -> Path:
    return sweeps_dir(root) / safe_name(name, "sweep name")


def manifest_path(root: Path, name: str) -> Path:
    return sweep_dir(root, name) / MANIFEST


def adaptive_path(root: Path, name: str) -> Path:
    """Where an adaptive sweep records its design and looks (beside its manifest)."""
    return sweep_dir(root, name) / ADAPTIVE


def studies_dir(root: Path) -> Path:
    return Path(root) / "studies"


def stale_dir(root: Path) -> Path:
    return Path(root) / "stale"
