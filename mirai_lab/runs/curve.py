"""The convergence curve: a tidy long table (run_id, step, images_seen, wall_s, metric, value).

Points come at two rates (training/trainer.py): every `train.val_every` steps the training
losses and val_nll, every `train.eval_every` steps also the sample metrics with their count
(`n_samples`); the last point, at step == train.steps, carries the final evaluation, so the
curve ends at what final.json says.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

from mirai_lab.errors import CorruptFile
from mirai_lab.files.atomic import write_text

COLUMNS = ("run_id", "step", "images_seen", "wall_s", "metric", "value")

Row = tuple[str, int, int, float, str, float]


class Curve:
    def __init__(self, run_id: str, rows: list[Row] | None = None) -> None:
        self.run_id = run_id
        self.rows: list[Row] = rows or []

    def add(self, step: int, images_seen: int, wall_s: float, values: dict[str, float]) -> None:
        for metric, value in sorted(values.items()):
            self.rows.append((self.run_id, step, images_seen, round(wall_s, 3), metric, float(value)))

    def text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(self.rows)
        return buf.getvalue()

    def digest(self) -> str:
        """sha256 of the CSV text: a checkpoint keeps it to verify the curve it resumes with."""
        return hashlib.sha256(self.text().encode()).hexdigest()

    def save(self, path: Path) -> None:
        write_text(path, self.text())

    def head(self, n: int) -> Curve:
        """The first n rows: the part of the curve a checkpoint vouches for."""
        return Curve(self.run_id, self.rows[:n])

    @classmethod
    def load(cls, path: Path, run_id: str) -> Curve:
        """The curve of `run_id` stored at `path` (empty if there is none); CorruptFile if it is not one."""
        if not path.exists():
            return cls(run_id)
        return cls(run_id, read_rows(path, run_id))

    @classmethod
    def readable_head(cls, path: Path, run_id: str) -> Curve:
        """The rows of `path` before its first unreadable one: what a damaged curve still holds."""
        curve = cls(run_id)
        with contextlib.suppress(CorruptFile, OSError):
            for row in _rows(path, run_id):
                curve.rows.append(row)
        return curve


def read_rows(path: Path, run_id: str | None = None) -> list[Row]:
    """Every row of the curve file at `path`, of run `run_id` (of any run if None); CorruptFile if
    the file is not a curve: an empty file, other columns, a row cut short or not a number."""
    return list(_rows(path, run_id))


def _rows(path: Path, run_id: str | None) -> Iterator[Row]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise ValueError(f"columns {reader.fieldnames}, expected {list(COLUMNS)}")
            for r in reader:
                if run_id is not None and r["run_id"] != run_id:
                    raise ValueError(f"a row of run {r['run_id']!r}")
                yield (r["run_id"], int(r["step"]), int(r["images_seen"]), float(r["wall_s"]), r["metric"],
                       float(r["value"]))
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
        raise CorruptFile(f"{path} is not a curve{f' of run {run_id}' if run_id else ''}: {exc}") from exc
