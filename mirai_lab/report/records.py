"""The sweep records a report rests on, copied beside it so that a report folder stands alone.

A committed result is its report plus the records that say what was run: the manifest (runs,
configs, seeds), the adaptive design and its looks, the confirmation and robustness verdicts,
and where the time went. They live under <results>/sweeps/<name>/, which is not committed, so
`report` copies them into its output folder:

    <out>/{manifest,adaptive,confirm,robust,timing}.json     the reported sweep's own
    <out>/confirm/{manifest,timing}.json                      its fresh-seed sweep
    <out>/robust-<setting>/{manifest,timing}.json             each neighbouring-setting sweep

(with several sweeps, each goes under <out>/<sweep>/). The records name the results directory
in the commands they keep; its absolute path is written as the user gave it, here and in
report.md, so a report folder carries no path of the machine that made it.
"""

from __future__ import annotations

from pathlib import Path

from mirai_lab.files.atomic import read_json, write_text
from mirai_lab.results_dir import ADAPTIVE, CONFIRM, MANIFEST, ROBUST, TIMING, safe_name, sweep_dir

OWN = (MANIFEST, ADAPTIVE, CONFIRM, ROBUST, TIMING)
FOLLOW_UP = (MANIFEST, TIMING)
CONFIRM_FOLDER = "confirm"


def follow_ups(results: Path, sweep: str) -> dict[str, str]:
    """The sweeps made from `sweep` (its confirmation and its robustness settings): folder -> sweep name."""
    found: dict[str, str] = {}
    confirm = sweep_dir(results, sweep) / CONFIRM
    if confirm.is_file() and read_json(confirm).get("rows"):
        found[CONFIRM_FOLDER] = f"{sweep}-confirm"
    robust = sweep_dir(results, sweep) / ROBUST
    if robust.is_file():
        for setting in read_json(robust).get("settings", []):
            folder = safe_name(f"robust-{setting['name'].replace('=', '-')}", "robustness folder")
            found[folder] = setting["sweep"]
    return found


def as_given(text: str, results: Path) -> str:
    """`text` with the results directory's absolute path written as the user gave it."""
    return text.replace(str(Path(results).resolve()), str(results))


def _copy(source: Path, target: Path, results: Path) -> None:
    if source.is_file():
        write_text(target, as_given(source.read_text(), results))


def copy_records(results: Path, sweeps: list[str], out_dir: Path) -> list[Path]:
    """Copy each sweep's records (and its follow-up sweeps' manifests and timings) into out_dir;
    returns the folders written. A record a sweep does not have is skipped."""
    results, out_dir = Path(results), Path(out_dir)
    written = []
    for sweep in sweeps:
        home = out_dir if len(sweeps) == 1 else out_dir / safe_name(sweep, "sweep name")
        for name in OWN:
            _copy(sweep_dir(results, sweep) / name, home / name, results)
        for folder, follow_up in follow_ups(results, sweep).items():
            for name in FOLLOW_UP:
                _copy(sweep_dir(results, follow_up) / name, home / folder / name, results)
        written.append(home)
    return written
