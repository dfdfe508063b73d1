"""What a sweep is asked to do: the typed request that the CLI, `reproduce` and the adaptive rounds
hand to `run_sweep`. The library never rebuilds a command line: the command the user typed is
carried as text only to be recorded in the manifest and the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HEARTBEAT_S = 30  # claim heartbeat of workers sharing a storage; 3 missed beats hand the run to another worker


@dataclass(frozen=True)
class SweepRequest:
    """One sweep: which spec, how it is narrowed, how it is executed, and the command that asked for it."""

    spec: Path  # an axis spec (experiments/specs/axes/<axis>.toml) or any experiment file
    command: str  # what the user typed ("mirai-lab sweep --axis layout"), for the manifest and reports
    set_items: tuple[str, ...] = ()
    budget: str | None = None
    seeds: int | None = None
    name: str | None = None
    variant_seeds: dict[str, int] | None = field(default=None, hash=False)
    workers: int = 1  # runs trained at once on this machine, one worker process each when > 1
    threads: int | None = None  # torch threads per run (default: the cores shared among the workers)
    storage: str | None = None  # an Optuna storage shared with workers elsewhere (queue.py)
    heartbeat_s: int = HEARTBEAT_S
    retry_failed: bool = False
    rerun_stale: bool = False
    dry_run: bool = False
