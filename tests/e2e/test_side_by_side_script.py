"""benchmarks/side_by_side.py: what it reads from each reproduction (verdicts, the time paragraph)
and how it prints them; the reproductions themselves take tens of minutes and are not run here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "side_by_side.py"


def load_script():
    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdicts_and_breakdown_are_read_from_a_report(tmp_path: Path):
    script = load_script()
    pd.DataFrame({"variant": ["baseline", "a"], "n": [5, 5], "verdict_val_nll": [None, "better"],
                  "verdict_fid_domain": [None, "unresolved"]}).to_csv(tmp_path / "table.csv", index=False)
    (tmp_path / "report.md").write_text("# r\n\n## Time\n\n`t`: 30 min\n\nparts\n## Table\n\nx\n")
    found = script.verdicts(tmp_path)
    assert list(found.columns) == ["verdict_val_nll", "verdict_fid_domain"]
    assert found.loc["a"].tolist() == ["better", "unresolved"]
    assert script.breakdown(tmp_path) == ["`t`: 30 min", "parts"]
    (tmp_path / "report.md").write_text("# r\n\n## Table\n")
    assert script.breakdown(tmp_path) == ["(this commit's report has no time breakdown)"]


def test_markdown_table_has_the_index_and_every_cell():
    script = load_script()
    frame = pd.DataFrame({"v (old)": ["better", "-"], "v (new)": ["better", "worse"]},
                         index=pd.Index(["a", "b"], name="variant"))
    assert script.markdown(frame) == ["| variant | v (old) | v (new) |", "| --- | --- | --- |",
                                      "| a | better | better |", "| b | - | worse |"]
