"""The precision of a sweep: `train.precision = auto` resolved once, and kept by the manifest.

A sweep's runs are paired by seed, so they must all be computed the same way. The first plan of
a sweep resolves "auto" on its reference run (training/precision.py) and the manifest records
the answer; every later plan of the same sweep (the rounds of an adaptive sweep, a re-run, a
worker on another machine) reads it back instead of measuring again, so a sweep never mixes
precisions, whichever machine continues it.
"""

from __future__ import annotations

from pathlib import Path

from mirai_lab.config import RunConfig
from mirai_lab.experiments.spec import PrecisionResolver
from mirai_lab.experiments.sweep import manifest_path
from mirai_lab.files.atomic import read_json
from mirai_lab.messages import say
from mirai_lab.training.precision import auto_precision


def recorded_precision(root: Path, sweep_name: str) -> str | None:
    """The precision the sweep's manifest records, if it has one."""
    path = manifest_path(root, sweep_name)
    try:
        value = read_json(path).get("precision") if path.is_file() else None
    except (ValueError, OSError, AttributeError):
        return None  # an unreadable manifest records nothing; write_manifest replaces it
    return value if value in ("fp32", "bf16") else None


def sweep_precision(root: Path, quiet: bool = False) -> PrecisionResolver:
    """The resolver `load_plan` calls when a plan asks for "auto" (at most once per plan)."""

    def resolve(reference: RunConfig, sweep_name: str) -> str:
        kept = recorded_precision(root, sweep_name)
        if kept is not None:
            return kept
        choice = auto_precision(reference, root)
        if not quiet:
            say(f"sweep {sweep_name}: train.precision=auto -> {choice['precision']} for every run "
                f"({choice['reason']})")
        return choice["precision"]

    return resolve
