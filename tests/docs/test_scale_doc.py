"""docs/scale.md's shell blocks, run as written: the tiny form of every scale-path command, on a CPU.

The ```bash blocks run one after the other in one bash process (they share the variables the
first ones set, as in a reader's terminal), in a scratch working folder, with the commands of
this interpreter's environment first on PATH (where a wheel install puts `mirai-lab`,
`torchrun` and `python`) and TMPDIR in tmp_path, so the doc's `mktemp -d` and with it
$MIRAI_LAB_RESULTS land there. Two rules stand in for the reader:

- a block preceded by `<!-- not run: REASON -->` needs what REASON names (a GPU, several
  machines, a PostgreSQL server): it is only parsed (`bash -n`) and reported as skipped, with
  the reason;
- "save as `NAME`" before the ```toml block: the block is saved under NAME in the working
  folder (and it must be the spec the package ships under that name).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

from mirai_lab.experiments.spec import SPECS_DIR
from mirai_lab.files.atomic import read_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "scale.md"
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")
NEEDS = ("GPU", "machines", "PostgreSQL")  # what a skipped block may need; anything else runs here


class Block(NamedTuple):
    line: int  # of its opening fence
    text: str
    not_run: str | None  # the reason, for a block marked not to run


def bash_blocks(doc: str) -> list[Block]:
    blocks, lines = [], doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "```bash":
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = NOT_RUN.fullmatch(before.strip())
        blocks.append(Block(i + 1, "\n".join(lines[i + 1 : end]), marked.group(1) if marked else None))
    return blocks


def saved_spec(doc: str) -> tuple[str, str]:
    """(file name, text) of the ```toml block and the `save as` name written before it."""
    toml = re.search(r"```toml\n(.*?)```", doc, re.S)
    name = re.findall(r"save as `([^`]+)`", doc[: toml.start()])[-1]
    return name, toml.group(1)


BLOCKS = bash_blocks(DOC.read_text())
SKIPPED = [b for b in BLOCKS if b.not_run]


@pytest.mark.parametrize("block", SKIPPED, ids=[f"line-{b.line}" for b in SKIPPED])
def test_a_block_marked_not_run_parses_and_names_what_it_needs(block: Block):
    assert any(need in block.not_run for need in NEEDS), f"line {block.line}: {block.not_run!r} names none of {NEEDS}"
    parsed = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, f"line {block.line}: {parsed.stderr}"
    pytest.skip(f"docs/scale.md line {block.line}: {block.not_run}")


@pytest.mark.slow
def test_the_tiny_blocks_run_as_written(tmp_path: Path):
    runnable = [b for b in BLOCKS if not b.not_run]
    assert len(runnable) >= 7 and len(SKIPPED) <= len(BLOCKS) - 7  # every section keeps a tiny form that runs
    for block in runnable:  # what a wheel install has: the package's commands, no checkout, no test suite
        assert ".venv/" not in block.text and "pytest" not in block.text, f"line {block.line}"
    work = tmp_path / "work"
    work.mkdir()
    name, spec = saved_spec(DOC.read_text())
    assert tomllib.loads(spec) == tomllib.loads((SPECS_DIR / name).read_text())
    (work / name).write_text(spec)
    script = "set -eu\n" + "".join(f"echo '### docs/scale.md line {b.line}' >&2\n{b.text}\n" for b in runnable)
    env = {k: v for k, v in os.environ.items() if k not in ("MIRAI_LAB_RESULTS", "PYTHONPATH")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", TMPDIR=str(tmp_path),
               PYTHONWARNINGS="ignore")
    ran = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-4000:]

    (demo,) = [p for p in tmp_path.iterdir() if p.name.startswith("tmp.")]  # the doc's mktemp -d
    assert read_json(demo / "feats" / "manifest.json")["complete"]
    runs = sorted((demo / "results" / "runs").iterdir())
    assert len(runs) == 2  # Mirai-I under torchrun, then the static teacher from its export (the plan trains none)
    assert all(read_json(run / "status.json")["state"] == "done" for run in runs)
    assert (work / "gpt-b-mirai.pt").is_file()
    assert "sweep table2-imagenet: 10 runs" in " ".join((ran.stdout + ran.stderr).split())
