"""Property-based attack on the CLI's promise for bad input: exit code 2, one line on stderr
starting with "error:", no traceback, nothing written (no file, no folder, no .lock), done
within a time bound.

Every case runs in-process (`mirai_lab.cli.main` with a patched sys.argv: tests/cli_helpers.py) in a fresh empty
folder that is both the working directory and the parent of the results directory. The
generated values are bad by construction (non-finite, out of range, wrong type, unknown
name), so a case that trains or writes anything is a failure of validation.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import stat
import tempfile
import time
import typing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import entries, refused, run_main, tiny_spec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mirai_lab.config import (
    CHOICES,
    MAX_SAMPLES,
    MAX_SEEDS,
    MAX_SPEC_DEPTH,
    MAX_WORKERS,
    SECTIONS,
    RunConfig,
)
from mirai_lab.presets import BUDGETS

# make test runs this file in one process of its own, so that the case count below sees every case
CATEGORIES = 11  # the categories of generated cases: run_case's and the damaged folders'
TIME_BOUND_S = 30  # a case still running after this is a hang (SIGALRM stops it)
COUNTS: Counter[str] = Counter()
STARTED = time.monotonic()
# no shrinking: a failing case is reported as generated (shrinking a hang would re-run it many times)
FUZZ = settings(max_examples=80, deadline=None, database=None, derandomize=True, report_multiple_bugs=False,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- running one case ---------------------------------------------------------------------------------------------

def run_case(category: str, argv: list[str], folder: Path) -> str:
    """Run `mirai-lab ARGV` in `folder`, assert the bad-input contract (cli_helpers.refused), return the line."""
    COUNTS[category] += 1
    return refused(argv, folder, timeout_s=TIME_BOUND_S)


@contextlib.contextmanager
def fresh() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        yield folder
    finally:
        for p in [folder, *folder.rglob("*")]:  # read-only folders made by a case
            if p.is_dir() and not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(folder, ignore_errors=True)


# --- bad values per field type -------------------------------------------------------------------------------------

FIELDS = {f"{section}.{key}": typ for section in SECTIONS
          for key, typ in typing.get_type_hints(type(getattr(RunConfig(), section))).items()}
FLOAT_KEYS = sorted(k for k, t in FIELDS.items() if t is float)
INT_KEYS = sorted(k for k, t in FIELDS.items() if t is int)
BOOL_KEYS = sorted(k for k, t in FIELDS.items() if t is bool)
NON_FINITE = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "1e999", "-1e999"])
NOT_A_NUMBER = st.text(st.characters(categories=("L", "P", "S")), min_size=1, max_size=12).filter(
    lambda s: s.strip() and s.strip().lower() not in ("nan", "inf", "infinity", "-inf", "+inf", "-nan", "+nan")
    and "=" not in s)
# float fields whose valid range is bounded: a value outside it
OUT_OF_RANGE = {
    "data.val_fraction": st.floats(1.0, 1e9) | st.floats(-1e9, 0.0),
    "train.beta1": st.floats(1.0, 1e9) | st.floats(-1e9, -1e-6),
    "train.beta2": st.floats(1.0, 1e9) | st.floats(-1e9, -1e-6),
    "train.ema_decay": st.floats(1.0, 1e9) | st.floats(-1e9, -1e-6),
    "train.lr": st.floats(-1e9, 0.0),
    "train.weight_decay": st.floats(-1e9, -1e-6),
    "train.grad_clip": st.floats(-1e9, -1e-6),
    "train.min_lr_ratio": st.floats(1.0 + 1e-6, 1e9) | st.floats(-1e9, -1e-6),
    "model.token_dropout": st.floats(1.0, 1e9) | st.floats(-1e9, -1e-6),
    "model.class_dropout": st.floats(1.0, 1e9) | st.floats(-1e9, -1e-6),
    "foresight.coef": st.floats(-1e9, -1e-6),
    "foresight.warmup_frac": st.floats(1.0, 1e9) | st.floats(-1e9, -1e-6),
    "foresight.step_at": st.floats(1.0, 1e9) | st.floats(-1e9, 0.0),
    "eval.cfg_scale": st.floats(100.0 + 1e-3, 1e12) | st.floats(-1e9, -1e-6),
    "eval.temperature": st.floats(-1e9, 0.0),
    "eval.top_p": st.floats(1.0 + 1e-6, 1e9) | st.floats(-1e9, 0.0),
}


@st.composite
def bad_setting(draw: st.DrawFn) -> str:
    """One `key=value` that no valid config has."""
    kind = draw(st.sampled_from(["float", "int", "choice", "bool", "list", "unknown"]))
    if kind == "float":
        key = draw(st.sampled_from(FLOAT_KEYS))
        bounded = OUT_OF_RANGE.get(key)
        value = draw(NON_FINITE | NOT_A_NUMBER | (bounded.map(repr) if bounded is not None else NON_FINITE))
    elif kind == "int":
        key = draw(st.sampled_from(INT_KEYS))
        huge = st.integers(10**10, 10**30).map(str)  # above every bound (and 2**31 for seeds)
        value = draw(st.integers(-10**12, -1).map(str) | huge | st.sampled_from(["1.5", "2e3", "1e20", "nan", "0x10"])
                     | NOT_A_NUMBER)
    elif kind == "choice":
        key = draw(st.sampled_from(sorted(CHOICES)))
        value = draw(st.text(min_size=0, max_size=10).filter(lambda s, k=key: s.strip() not in CHOICES[k]
                                                              and "\n" not in s))
    elif kind == "bool":
        key = draw(st.sampled_from(BOOL_KEYS))
        value = draw(NOT_A_NUMBER.filter(lambda s: s.lower() not in ("true", "false", "yes", "no")))
    elif kind == "list":
        key = "foresight.head_coefs"
        value = draw(st.sampled_from(["[nan]", "[1, inf]", "[1,2", "[-1]", "[\"a\"]", "{}", "[[1]]"]))
    else:
        key = draw(st.sampled_from(["train.stepz", "nosuch.key", "model", ".x", "train.", "foresight.kk"]))
        value = "1"
    return f"{key}={value}"


SET_COMMANDS = {
    "train": ["train", "--budget", "smoke"],
    "sweep": ["sweep", "--axis", "layout", "--budget", "smoke"],
    "prepare": ["prepare"],
    "floors": ["eval", "--floors"],
    "tune": ["tune", "--budget", "smoke", "--objective", "val_nll"],
}


@FUZZ
@given(setting=bad_setting(), command=st.sampled_from(sorted(SET_COMMANDS)))
def test_bad_set_values(setting, command):
    with fresh() as folder:
        argv = [*SET_COMMANDS[command], "--set", setting, "--results-dir", str(folder / "results")]
        if command == "train" and setting.startswith("foresight."):
            argv += ["--set", "foresight.source=ema"]  # the value then matters; it is checked either way
        run_case("--set values", argv, folder)


# --- bad spec files ------------------------------------------------------------------------------------------------

BASE_SWEEP = """[experiment]
name = "fz"
{experiment}
[base]
data = {{ dataset = "synthetic" }}
{base}
[axes.a]
v = {{ train = {{ steps = 3 }} }}
"""


@st.composite
def bad_spec(draw: st.DrawFn) -> tuple[str, str]:
    """(verb, TOML text): a train spec or an experiment spec that must be refused."""
    kind = draw(st.sampled_from(["nested-list", "nested-table", "non-finite", "seeds", "budget", "syntax",
                                 "unknown", "bad-value"]))
    if kind == "nested-list":
        depth = draw(st.integers(MAX_SPEC_DEPTH + 1, 3000))
        return draw(st.sampled_from(["train", "sweep"])), "a = " + "[" * depth + "]" * depth + "\n"
    if kind == "nested-table":
        depth = draw(st.integers(MAX_SPEC_DEPTH + 1, 400))
        return draw(st.sampled_from(["train", "sweep"])), "train = " + "{ a = " * depth + "1" + " }" * depth + "\n"
    if kind == "non-finite":
        key = draw(st.sampled_from(FLOAT_KEYS))
        section, name = key.split(".")
        value = draw(st.sampled_from(["nan", "inf", "-inf", "+nan"]))
        if draw(st.booleans()):
            return "train", f"[{section}]\n{name} = {value}\n"
        return "sweep", BASE_SWEEP.format(experiment="", base=f"{section} = {{ {name} = {value} }}")
    if kind == "seeds":
        seeds = draw(st.integers(MAX_SEEDS + 1, 10**12).map(str) | st.integers(-10**6, 0).map(str)
                     | st.just("[" + ", ".join(map(str, range(MAX_SEEDS + 1))) + "]") | st.just("'3'"))
        return "sweep", BASE_SWEEP.format(experiment=f"seeds = {seeds}", base="")
    if kind == "budget":
        budget = draw(st.text(st.characters(categories=("L", "N")), max_size=8).filter(lambda s: s not in BUDGETS))
        if draw(st.booleans()):
            return "train", f'budget = "{budget}"\n'
        return "sweep", BASE_SWEEP.format(experiment=f'budget = "{budget}"', base="")
    if kind == "syntax":
        return draw(st.sampled_from(["train", "sweep"])), draw(st.sampled_from(
            ["[train\nsteps = 3", "[train]\nsteps = ", "x = \"unterminated", "[[axes]]\n[axes]", "= 3", "\x00\x01"]))
    if kind == "unknown":
        name = draw(st.text(st.characters(categories=("Ll",)), min_size=1, max_size=8)).strip()
        if name in SECTIONS or name in ("budget", "experiment", "base", "axes", "paper"):
            name = name + "x"
        return draw(st.sampled_from(["train", "sweep"])), f"[{name}]\na = 1\n"
    key = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    section, name = key.split(".")
    value = draw(OUT_OF_RANGE[key])
    return "sweep", BASE_SWEEP.format(experiment="", base=f"{section} = {{ {name} = {value!r} }}")


@FUZZ
@given(case=bad_spec(), smoke=st.booleans())
def test_bad_spec_files(case, smoke):
    verb, text = case
    with fresh() as folder:
        spec = folder / "spec.toml"
        spec.write_text(text)
        argv = ["train", str(spec)] if verb == "train" else ["sweep", "--experiment", str(spec)]
        if smoke:
            argv += ["--budget", "smoke"]  # a spec's own budget is checked even then
        if verb == "sweep":
            argv.append("--dry-run" if smoke else "--json")
        run_case("spec files", [*argv, "--results-dir", str(folder / "results")], folder)


# --- bad command-line options --------------------------------------------------------------------------------------

BAD_NAMES = st.one_of(
    st.text(min_size=0, max_size=6).map(lambda s: "../" + s),
    st.text(min_size=1, max_size=6).map(lambda s: "." + s),
    st.text(min_size=1, max_size=6).map(lambda s: "a/" + s),
    st.just(""), st.just(".."), st.just("x" * 300),
)


@st.composite
def bad_option(draw: st.DrawFn) -> list[str]:
    kind = draw(st.sampled_from(["budget", "count", "cfg", "seeds", "workers", "trials", "study", "storage",
                                 "sqlite-workers", "run-name", "extractor", "sample-seed"]))
    if kind == "budget":
        budget = draw(st.text(max_size=8).filter(lambda s: s not in BUDGETS and not s.startswith("-")))
        verb = draw(st.sampled_from([["train"], ["sweep", "--axis", "layout"], ["tune"], ["prepare"]]))
        return [*verb, "--budget", budget]
    if kind == "count":
        n = draw(st.integers(MAX_SAMPLES + 1, 10**15) | st.integers(-10**6, 0))
        return [draw(st.sampled_from(["sample", "eval"])), "somerun", "--n", str(n)]
    if kind == "cfg":
        return ["sample", "somerun", "--cfg", draw(NON_FINITE)]
    if kind == "seeds":
        n = draw(st.integers(MAX_SEEDS + 1, 10**12) | st.integers(-10**6, 0))
        return ["sweep", "--axis", "layout", "--budget", "smoke", "--dry-run", "--seeds", str(n)]
    if kind == "workers":
        n = draw(st.integers(MAX_WORKERS + 1, 10**9) | st.integers(-10**6, 0))
        return ["sweep", "--axis", "layout", "--budget", "smoke", "--workers", str(n)]
    if kind == "trials":
        return ["tune", "--budget", "smoke", "--trials", str(draw(st.integers(-10**6, 0)))]
    if kind == "study":
        return ["tune", "--budget", "smoke", "--objective", "val_nll", "--study",
                draw(BAD_NAMES.filter(lambda s: s and not s.startswith("-")))]
    if kind == "storage":
        prefix = draw(st.sampled_from(["", "http://", "mysql://h/db", "sqlite://", "sqlite:", "journal:", "postgres:",
                                       "postgresql:", "sqlite:///"]))
        url = prefix if prefix in ("journal:", "sqlite:///", "postgresql:") else prefix + draw(
            st.text(st.characters(categories=("L", "N")), max_size=6))
        if url.startswith("journal:") and url != "journal:" or (url.startswith("sqlite:///") and len(url) > 10):
            url = "bogus+" + url
        verb = draw(st.sampled_from([["sweep", "--axis", "layout", "--budget", "smoke"],
                                     ["tune", "--budget", "smoke", "--objective", "val_nll"]]))
        return [*verb, "--storage", url]
    if kind == "sqlite-workers":
        n = draw(st.integers(2, MAX_WORKERS))
        return ["sweep", "--axis", "layout", "--budget", "smoke", "--workers", str(n), "--storage",
                "sqlite:///" + draw(st.sampled_from(["/tmp/fuzz-never.db", "x.db"]))]
    if kind == "run-name":
        verb = draw(st.sampled_from([["sample"], ["eval"]]))
        return [*verb, draw(BAD_NAMES.filter(lambda s: not s.startswith("-")))]
    if kind == "extractor":
        name = draw(st.text(max_size=8).filter(lambda s: s not in ("domain", "inception-v3-compat")
                                               and not s.startswith("-")))
        return ["eval", "--floors", "--extractor", name]
    return ["sample", "somerun", "--seed", str(draw(st.integers(2**31, 10**20) | st.integers(-10**9, -1)))]


@FUZZ
@given(argv=bad_option())
def test_bad_cli_options(argv):
    with fresh() as folder:
        run_case("CLI options", [*argv, "--results-dir", str(folder / "results")], folder)


# --- unusable results directories ----------------------------------------------------------------------------------

RESULT_COMMANDS = [["train", "--budget", "smoke"], ["sweep", "--axis", "layout", "--budget", "smoke"], ["prepare"],
                   ["eval", "--floors"], ["tune", "--budget", "smoke", "--objective", "val_nll"],
                   ["sample", "somerun"], ["report", "somesweep"]]


@FUZZ
@given(kind=st.sampled_from(["file", "under-file", "read-only", "under-read-only", "proc", "sys", "dev"]),
       name=st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8),
       command=st.sampled_from(range(len(RESULT_COMMANDS))))
def test_unusable_results_dirs(kind, name, command):
    with fresh() as folder:
        if kind in ("file", "under-file"):
            (folder / "taken").write_text("not a folder\n")
            target = folder / "taken" if kind == "file" else folder / "taken" / name
        elif kind in ("read-only", "under-read-only"):
            (folder / "locked").mkdir()
            (folder / "locked").chmod(0o555)
            target = folder / "locked" if kind == "read-only" else folder / "locked" / name
        else:
            target = Path(f"/{kind}") / f"mirai-fuzz-{name}"
        run_case("results directories", [*RESULT_COMMANDS[command], "--results-dir", str(target)], folder)


# --- option values checked on every path -------------------------------------------------------------------------

BAD_MARGIN = st.sampled_from(["nan", "inf", "-inf", "0", "1e999"]) | st.floats(-1e9, 0.0).map(repr)
BAD_MAX_SEEDS = st.integers(-10**9, 0) | st.integers(MAX_SEEDS + 1, 10**12)
# every combination of the flags that choose a path through `sweep` (and `reproduce`)
PATHS = st.sampled_from([[], ["--adaptive"], ["--no-adaptive"], ["--dry-run"], ["--adaptive", "--dry-run"],
                         ["--seeds", "3"], ["--seeds", "3", "--adaptive", "--dry-run"], ["--json"]])


@FUZZ
@given(option=st.sampled_from(["--margin", "--max-seeds", "--max-minutes"]), data=st.data(), path=PATHS,
       verb=st.sampled_from([["sweep", "--axis", "layout", "--budget", "smoke"],
                             ["reproduce", "table2", "--budget", "smoke"]]))
def test_adaptive_values_on_every_path(option, data, path, verb):
    """A bad --margin / --max-seeds / --max-minutes is refused whether or not the sweep is adaptive or dry."""
    value = str(data.draw(BAD_MAX_SEEDS)) if option == "--max-seeds" else data.draw(BAD_MARGIN)
    with fresh() as folder:
        path = [a for a in path if a != "--json"] if verb[0] == "reproduce" else path
        line = run_case("adaptive values", [*verb, *path, option, value, "--results-dir", str(folder / "results")],
                        folder)
        assert option.lstrip("-").replace("-", "_") in line, line


# --set fields that the chosen configuration never reads, with values that are valid where they are read
VALID_VALUES: dict[str, st.SearchStrategy[str]] = {
    "foresight.visibility": st.sampled_from(["full", "0", "1", "2", "7"]),
    "foresight.static_checkpoint": st.sampled_from(["/etc/passwd", "somerun", "/nonexistent/ckpt.pt"]),
    "foresight.encoder_weights": st.sampled_from(["/etc/shadow", "/nonexistent/dinov2.pth", "w.pt"]),
    "foresight.encoder": st.sampled_from(["mtm", "pixel-ae", "dinov2"]),
    "foresight.encoder_steps": st.integers(1, 1000).map(str),
    "data.codes_dir": st.sampled_from(["/nonexistent", "/tmp", "codes"]),
    "data.features_dir": st.sampled_from(["/nonexistent", "/tmp", "features"]),
    "train.min_lr_ratio": st.floats(0.0, 1.0).map(repr),
    "foresight.teacher_block": st.integers(1, 3).map(str),
}
# (command, the keys it never reads): a baseline run reads no foresight field, an EMA run no encoder field
UNUSED_BY = {
    ("train", "--budget", "smoke"): sorted(VALID_VALUES),
    ("train", "--budget", "smoke", "--set", "foresight.source=ema"):
        sorted(set(VALID_VALUES) - {"foresight.teacher_block"}),
    ("train", "--budget", "smoke", "--set", "foresight.source=bidirectional", "--set", "foresight.encoder=mtm"):
        ["foresight.static_checkpoint", "foresight.encoder_weights", "data.codes_dir", "data.features_dir",
         "foresight.teacher_block"],
    ("sweep", "--axis", "layout", "--budget", "smoke"): sorted(set(VALID_VALUES) - {"foresight.teacher_block"}),
    ("sweep", "--axis", "layout", "--budget", "smoke", "--dry-run"):
        sorted(set(VALID_VALUES) - {"foresight.teacher_block"}),
    ("tune", "--budget", "smoke", "--objective", "val_nll"): sorted(set(VALID_VALUES) - {"foresight.teacher_block"}),
}


@st.composite
def unused_setting(draw: st.DrawFn) -> tuple[list[str], str]:
    command = draw(st.sampled_from(sorted(UNUSED_BY)))
    key = draw(st.sampled_from(UNUSED_BY[command]))
    return list(command), f"{key}={draw(VALID_VALUES[key])}"


@FUZZ
@given(case=unused_setting())
def test_unused_set_fields_are_refused(case):
    """A --set field the run (or no run of the sweep, no trial of the study) reads would only change the run id."""
    command, setting = case
    with fresh() as folder:
        line = run_case("unused --set fields", [*command, "--set", setting, "--results-dir", str(folder / "results")],
                        folder)
        assert setting.split("=")[0].split(".")[1] in line, line  # "not used by", or validate's own "takes no"


@settings(FUZZ, max_examples=40)
@given(seed=st.integers(-10**12, -1) | st.integers(2**31, 10**20) | st.integers(0, 2**31 - 1)
       | st.sampled_from(["x", "1.5", "nan", ""]), dry=st.booleans())
def test_sweep_refuses_a_set_seed(seed, dry):
    """`train` refuses a bad train.seed; a sweep, which sets each run's seed itself, refuses any."""
    with fresh() as folder:
        argv = ["sweep", "--axis", "layout", "--budget", "smoke", "--set", f"train.seed={seed}",
                *(["--dry-run"] if dry else []), "--results-dir", str(folder / "results")]
        assert "train.seed" in run_case("sweep --set train.seed", argv, folder)


# --- names and paths of any length --------------------------------------------------------------------------------

LONG_NAME = st.integers(201, 6000).map(lambda n: "n" * n) | st.integers(256, 5000).map(lambda n: "x" * n)
LONG_PATH = (st.integers(256, 5000).map(lambda n: "p" * n)  # one name too long, or the whole path
             | st.integers(140, 300).map(lambda n: "/".join(["q" * 30] * n)))


@st.composite
def long_input(draw: st.DrawFn) -> list[str]:
    kind = draw(st.sampled_from(["report", "report-many", "plan", "sweep-name", "study", "experiment", "results",
                                 "spec", "tune-out", "report-out"]))
    if kind == "report":
        return ["report", draw(LONG_NAME)]
    if kind == "report-many":  # each name is fine, the folder they name together is not
        n = draw(st.integers(2, 40))
        return ["report", *[f"s{i}" + "a" * draw(st.integers(100, 200)) for i in range(n)]]
    if kind == "plan":
        return ["plan", draw(LONG_NAME)]
    if kind == "sweep-name":
        return ["sweep", "--axis", "layout", "--budget", "smoke", "--name", draw(LONG_NAME),
                *draw(st.sampled_from([[], ["--dry-run"], ["--adaptive"]]))]
    if kind == "study":
        return ["tune", "--budget", "smoke", "--objective", "val_nll", "--study", draw(LONG_NAME)]
    if kind == "experiment":
        return ["sweep", "--experiment", draw(LONG_PATH), *draw(st.sampled_from([[], ["--dry-run"]]))]
    if kind == "results":
        return [*draw(st.sampled_from([["report", "s"], ["plan", "s"], ["sweep", "--axis", "layout"]])),
                "--results-dir", draw(LONG_PATH)]
    if kind == "spec":
        return ["train", draw(LONG_PATH)]
    if kind == "tune-out":
        return ["tune", "--budget", "smoke", "--objective", "val_nll", "--out", draw(LONG_PATH)]
    return ["report", "s", "--out", draw(LONG_PATH)]


@FUZZ
@given(argv=long_input())
def test_names_and_paths_of_any_length(argv):
    with fresh() as folder:
        extra = [] if "--results-dir" in argv else ["--results-dir", str(folder / "results")]
        line = run_case("long names and paths", [*argv, *extra], folder)
        assert len(line) < 1000, line  # one readable line, not the 5000-character name echoed back


# --- storages that cannot be opened -------------------------------------------------------------------------------

def _closed_port() -> int:
    """A local TCP port nothing listens on (connecting to it is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@st.composite
def unusable_storage(draw: st.DrawFn) -> tuple[str, str]:
    """(kind, URL template): {folder} is the case's folder."""
    kind = draw(st.sampled_from(["kernel", "under-file", "read-only", "directory", "too-long", "postgres"]))
    name = draw(st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8))
    scheme = draw(st.sampled_from(["journal:", "sqlite:///"]))
    if kind == "kernel":
        return kind, scheme + draw(st.sampled_from(["/proc", "/sys", "/dev"])) + f"/mirai-fuzz-{name}"
    if kind == "under-file":
        return kind, scheme + "{folder}/taken/" + name
    if kind == "read-only":
        return kind, scheme + "{folder}/locked/" + draw(st.sampled_from([name, f"{name}/deeper"]))
    if kind == "directory":
        return kind, scheme + "{folder}"
    if kind == "too-long":
        return kind, scheme + "{folder}/" + "j" * draw(st.integers(256, 3000))
    user = draw(st.sampled_from(["u", "mirai", "u:secret"]))
    return kind, f"postgresql://{user}@127.0.0.1:{{port}}/{name}"


@settings(FUZZ, max_examples=60)
@given(case=unusable_storage(), verb=st.sampled_from([
    ["sweep", "--axis", "layout", "--budget", "smoke"], ["sweep", "--axis", "layout", "--budget", "smoke", "--dry-run"],
    ["sweep", "--axis", "layout", "--budget", "smoke", "--workers", "2"],
    ["tune", "--budget", "smoke", "--objective", "val_nll"]]))
def test_unusable_storages_write_nothing(case, verb):
    """The storage is opened (a file's place checked, a database connected) before the manifest is written."""
    kind, template = case
    if "--workers" in verb and template.startswith("sqlite"):
        verb = verb[:-2]  # SQLite with several workers is refused for another reason (test_bad_cli_options)
    with fresh() as folder:
        (folder / "taken").write_text("not a folder\n")
        (folder / "locked").mkdir()
        (folder / "locked").chmod(0o555)
        url = template.format(folder=folder, port=_closed_port())
        line = run_case("unusable storages", [*verb, "--storage", url, "--results-dir", str(folder / "results")],
                        folder)
        assert "secret" not in line, line  # a password never reaches the error line


# --- damaged results folders ---------------------------------------------------------------------------------------

DAMAGE_SPEC = tiny_spec("dmg", seeds=1, samples=8,
                        train="steps = 2, batch_size = 8, eval_every = 2, val_every = 2, threads = 1", foresight="{}",
                        variants='ema = { foresight = { source = "ema", k = 3, coef = 1.0 } }')
RUN_FILES = ["config.json", "status.json", "curve.csv", "final.json"]
SWEEP_FILES = ["manifest.json", "adaptive.json"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-run sweep (baseline and EMA, one seed, two steps each): the folder every
    damaged-folder case copies and then damages."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "dmg.toml").write_text(DAMAGE_SPEC)
    ran = run_main(["sweep", "--experiment", str(folder / "dmg.toml"), "--results-dir", str(folder / "results"),
                    "--json"], folder)
    assert ran.code == 0, ran.err
    return folder


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, str, bytes | int]:
    """(file, kind, new content or the byte count to truncate to)."""
    name = draw(st.sampled_from(RUN_FILES + SWEEP_FILES))
    kind = draw(st.sampled_from(["garbage", "truncated", "empty", "binary", "json-value", "nul"]))
    if kind == "garbage":
        return name, kind, draw(st.text(max_size=40)).encode()
    if kind == "truncated":
        return name, kind, draw(st.integers(0, 400))
    if kind == "empty":
        return name, kind, b""
    if kind == "binary":
        return name, kind, draw(st.binary(min_size=1, max_size=64))
    if kind == "nul":
        return name, kind, b"\x00" * draw(st.integers(1, 64))
    return name, kind, json.dumps(draw(JSON_VALUES)).encode()


def _damage(results: Path, name: str, content: bytes | int) -> Path:
    if name in SWEEP_FILES:
        target = results / "sweeps" / "dmg" / name
    else:  # one of the two runs, the same one every time: the EMA run's folder sorts after or before; either will do
        target = sorted((results / "runs").iterdir())[0] / name
    if isinstance(content, int):
        content = target.read_bytes()[:content] if target.exists() else b'{"loo'
    target.write_bytes(content)
    return target


def check_damaged(category: str, argv: list[str], folder: Path, results: Path) -> None:
    """One `error:` line, exit 2 and nothing written; or exit 0 with at most one `warning:` line and
    the command's result there (a report, a plan, a sweep whose manifest reads again)."""
    COUNTS[category] += 1
    before = entries(folder)
    ran = run_main(argv, folder, timeout_s=TIME_BOUND_S)
    assert "Traceback" not in ran.err, (argv, ran.err)
    lines = [ln for ln in ran.err.splitlines() if ln.strip() and not ln.startswith("report -> ")]
    if ran.code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, ran.err)
        assert entries(folder) == before, (argv, sorted(entries(folder) ^ before))
        return
    assert ran.code == 0, (argv, ran)
    assert len(lines) <= 1 and all(ln.startswith("warning: ") for ln in lines), (argv, ran.err)
    if argv[0] == "report":
        assert (results / "reports" / "dmg" / "report.md").is_file()
    elif argv[0] == "plan":
        assert json.loads(ran.out)["sweep"] == "dmg"
    else:
        assert json.loads(ran.out)["name"] == "dmg", ran.out
        if "--dry-run" not in argv:  # the manifest was written again from the plan
            assert len(json.loads((results / "sweeps" / "dmg" / "manifest.json").read_text())["runs"]) == 2


@settings(FUZZ, max_examples=100)
@given(case=damage(), command=st.sampled_from(["plan", "dry-run", "sweep", "sweep"]))
def test_damaged_results_folders(finished_sweep, case, command):
    name, _, content = case
    if command == "sweep" and name in RUN_FILES:
        command = "dry-run"  # a damaged run is trained again: seconds per case, covered by tests/faults
    with fresh() as folder:
        shutil.copytree(finished_sweep, folder, dirs_exist_ok=True)
        results = folder / "results"
        _damage(results, name, content)
        spec = str(folder / "dmg.toml")
        argv = {"plan": ["plan", "dmg", "--json"], "dry-run": ["sweep", "--experiment", spec, "--dry-run", "--json"],
                "sweep": ["sweep", "--experiment", spec, "--json"]}[command]
        check_damaged("damaged folders", [*argv, "--results-dir", str(results)], folder, results)


@settings(FUZZ, max_examples=12)  # a report draws its figures: about a second each
@given(case=damage())
def test_damaged_results_folders_report(finished_sweep, case):
    name, _, content = case
    with fresh() as folder:
        shutil.copytree(finished_sweep, folder, dirs_exist_ok=True)
        results = folder / "results"
        _damage(results, name, content)
        check_damaged("damaged folders (report)", ["report", "dmg", "--results-dir", str(results)], folder, results)


def test_enough_cases_ran():
    """The acceptance asks for at least 600 generated bad inputs in the suite; the count and the
    time they took are printed (pytest -s) for the record."""
    if len(COUNTS) < CATEGORIES:
        pytest.skip("run with the whole file to count the cases")
    total = sum(COUNTS.values())
    print(f"fuzz: {total} cases in {time.monotonic() - STARTED:.0f} s: {dict(COUNTS)}")
    assert total >= 600, dict(COUNTS)
