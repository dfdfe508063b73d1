"""The convergence curve: a tidy long table (run_id, step, images_seen, wall_s, metric, value)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mirai_lab.runs.store import write_text

COLUMNS = ("run_id", "step", "images_seen", "wall_s", "metric", "value")


class Curve:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.rows: list[tuple[str, int, int, float, str, float]] = []

    def add(self, step: int, images_seen: int, wall_s: float, values: dict[str, float]) -> None:
        for metric, value in sorted(values.items()):
            self.rows.append((self.run_id, step, images_seen, round(wall_s, 3), metric, float(value)))

    def save(self, path: Path) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(self.rows)
        write_text(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, run_id: str, max_step: int | None = None) -> Curve:
        """Rows up to `max_step`: rows written after the last checkpoint are dropped on resume."""
        curve = cls(run_id)
        if not path.exists():
            return curve
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                step = int(r["step"])
                if max_step is None or step <= max_step:
                    curve.rows.append((r["run_id"], step, int(r["images_seen"]), float(r["wall_s"]), r["metric"],
                                       float(r["value"])))
        return curve
