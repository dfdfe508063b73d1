"""Where a result came from: code version, libraries, CPU, threads, precision.

Every run writes `provenance.json` beside its config.json, and every report or reproduction
writes `environment.json`, so a table can say which code computed its numbers. Run ids hash
the config only; `COMPUTE_VERSION` (runs/identity.py) is the code's side of the identity: a
run whose recorded version differs from the running code's is *stale*, and
`mirai-lab sweep --rerun-stale` trains it again (docs/provenance.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from mirai_lab.files.atomic import read_json, write_json
from mirai_lab.results_dir import PROVENANCE, run_dir
from mirai_lab.runs.identity import COMPUTE_VERSION

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# /proc/cpuinfo flags of the units a matmul can use, in the order they are named
MATRIX_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_matrix_extensions(cpuinfo: str | None = None) -> list[str]:
    """The vector/matrix extensions among MATRIX_FLAGS that the CPU reports (Linux; [] elsewhere)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [flag for flag in MATRIX_FLAGS if flag in flags]


LIBRARIES = ("torch-fidelity", "optuna", "numpy", "scipy", "scikit-learn")


def package_version(name: str = "mirai-lab") -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


CODE_PATHS = ("mirai_lab", "pyproject.toml")  # what a run's computation and a report's making rest on


def git_state(folder: Path = PACKAGE_DIR) -> dict[str, Any]:
    """{"commit", "dirty"} of the repository holding the code, or {} outside one (a wheel).

    "dirty" means the code differs from the commit: tracked files of the package or the build
    changed. Result files are left out (CODE_PATHS), so a report that rewrites a committed
    results folder does not mark the runs trained after it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if not (top / "pyproject.toml").is_file() or PACKAGE_DIR.parent.resolve() != top.resolve():
            return {}  # an installed copy that happens to sit inside some other repository
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--",
                                     *(f":(top){p}" for p in CODE_PATHS)))}
    except (OSError, subprocess.SubprocessError):
        return {}


def provenance(threads: int | None = None, precision: str | None = None) -> dict[str, Any]:
    """The code and machine a computation ran on (contract: package, git, torch, CPU, threads)."""
    return {
        "package": "mirai-lab", "version": package_version(), "compute_version": COMPUTE_VERSION, **git_state(),
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu": cpu_model(), "cpu_matrix_extensions": cpu_matrix_extensions(), "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(), "precision": precision,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "libraries": {name: package_version(name) for name in LIBRARIES},
    }


def write_provenance(folder: Path, threads: int | None, precision: str | None) -> None:
    write_json(Path(folder) / PROVENANCE, provenance(threads, precision))


def recorded(root: Path, run_id: str) -> dict[str, Any]:
    """The run's provenance.json, or {} for a run made before runs recorded one."""
    path = run_dir(root, run_id) / PROVENANCE
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def is_stale(root: Path, run_id: str) -> bool:
    """True when the run exists and its recorded compute version is not the running code's."""
    return run_dir(root, run_id).is_dir() and recorded(root, run_id).get("compute_version") != COMPUTE_VERSION


def code_versions(root: Path, run_ids: list[str]) -> dict[str, list[str]]:
    """Code version label -> the runs it computed ("v<compute> <commit>[+dirty]", "unrecorded")."""
    out: dict[str, list[str]] = {}
    for run_id in dict.fromkeys(run_ids):
        if not run_dir(root, run_id).is_dir():
            continue
        p = recorded(root, run_id)
        if not p:
            label = "unrecorded"
        else:
            label = f"v{p.get('compute_version')} {p.get('version', '?')}"
            if p.get("commit"):
                label += f" {p['commit'][:10]}{'+dirty' if p.get('dirty') else ''}"
        out.setdefault(label, []).append(run_id)
    return out


def mixed_versions_warning(root: Path, run_ids: list[str]) -> str | None:
    """One line when the runs of a table were computed by different code, else None."""
    versions = code_versions(root, run_ids)
    if len(versions) < 2:
        return None
    parts = "; ".join(f"{label}: {len(ids)} run(s), e.g. {ids[0]}" for label, ids in versions.items())
    return f"warning: the table mixes code versions ({parts}); `mirai-lab sweep --rerun-stale` retrains stale runs"


def write_environment(folder: Path, root: Path, run_ids: list[str], **extra: Any) -> str | None:
    """environment.json of a report or reproduction: this process's provenance, the code
    versions of its runs and `extra`; returns the mixed-versions warning, if any."""
    versions = code_versions(root, run_ids)
    write_json(Path(folder) / "environment.json",
               {**provenance(), "run_code_versions": {k: len(v) for k, v in versions.items()}, **extra})
    return mixed_versions_warning(root, run_ids)
