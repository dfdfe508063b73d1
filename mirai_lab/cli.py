"""The `mirai-lab` command line: one thin command per verb; the logic lives in the modules.

Every user mistake is a `UserError` (or a usage error from the parser): one line on stderr,
exit code 2, nothing written.

Each verb imports its implementation when it runs: importing them all up front (torch._dynamo
through torchvision and torch-fidelity, sklearn, scipy, matplotlib) costs seconds that `--help`
or a refused option should not pay; they need only torch and the config.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException  # typer >= 0.20 vendors click

from mirai_lab import __version__
from mirai_lab.bench.llamagen import LLAMAGEN_DIR
from mirai_lab.bench.timing import SECTIONS
from mirai_lab.config import (
    MAX_SAMPLES,
    MAX_SEEDS,
    MAX_TRIALS,
    MAX_WORKERS,
    SEED_MAX,
    check_used,
    finite,
    load_spec_file,
    parse_set,
)
from mirai_lab.distributed import is_main_process
from mirai_lab.errors import UserError
from mirai_lab.experiments.spec import SPECS_DIR, axis_spec_path, parse_variant_seeds
from mirai_lab.foresight.fit import configure
from mirai_lab.messages import console, one_line, say
from mirai_lab.metrics import DEFAULT_OBJECTIVE
from mirai_lab.presets import MODEL_PRESETS
from mirai_lab.results_dir import bench_dir, cache_dir, reports_dir, results_root, safe_name
from mirai_lab.runs import tracking

NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits on one path component and on a whole path, in bytes
MAX_NAME = 200  # sweep, study and run names (results_dir.safe_name)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Does foresight help my AR image model, where, and how much?")

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value.")]
BudgetOpt = Annotated[str | None, typer.Option(help="Run length: smoke | quick | standard | paper.")]
ResultsOpt = Annotated[Path | None, typer.Option("--results-dir", envvar="MIRAI_LAB_RESULTS",
                                                 help="Results directory (default ./results).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
AdaptiveOpt = Annotated[bool | None, typer.Option("--adaptive/--no-adaptive", help="Add seeds in rounds until every "
                                                  "val_nll difference is resolved or equivalent (default: the spec's "
                                                  "[experiment] adaptive, unless --seeds is given); --seeds N is then "
                                                  "the first round.")]
MarginOpt = Annotated[float | None, typer.Option(help="Adaptive: equivalence margin in nats of val_nll (default: the "
                                                      "spec's, else 0.01).")]
MaxSeedsOpt = Annotated[int | None, typer.Option(help="Adaptive: seed cap (default: the spec's, else 10).")]
MaxMinutesOpt = Annotated[float | None, typer.Option(help="Adaptive: no round starts that would end past this many "
                                                          "minutes (default: the spec's, else 60).")]
TrackerOpt = Annotated[str | None, typer.Option(help="Log every step, the curves and the final metrics to none | "
                                                     "tensorboard | wandb (files in the run folder; W&B offline unless "
                                                     "$WANDB_MODE, project $WANDB_PROJECT or mirai-lab, "
                                                     "$WANDB_ENTITY; default $MIRAI_LAB_TRACKER or none).")]
LogEveryOpt = Annotated[float | None, typer.Option(
    "--log-every-s", min=0, help="Where stderr is not a terminal (a log, a pipe, a sweep worker's log): seconds "
                                 "between plain progress lines (0: every step; default $MIRAI_LAB_LOG_EVERY_S or 30). "
                                 "Not part of the run config.")]
NameOpt = Annotated[str | None, typer.Option(help="Sweep name (default: the spec's, plus budget, seeds and --set "
                                                  "when they differ from the spec's).")]


def _version(value: bool) -> None:
    if value:
        print(f"mirai-lab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Does foresight help my AR image model, where, and how much?"""


def _root(results_dir: Path | None) -> Path:
    if results_dir is not None:
        _path_option(results_dir, "--results-dir")
    return results_root(results_dir)


def _path_option(path: Path, flag: str) -> Path:
    """Refuse a path the file system cannot name (a component over 255 bytes, or 4096 bytes in all),
    which would otherwise surface as an OSError traceback from the first stat() of it."""
    if any(len(part.encode()) > NAME_MAX for part in path.parts) or len(str(path).encode()) >= PATH_MAX:
        raise UserError(f"{flag} {_shown(str(path))}: a path too long for the file system (a name has at most "
                        f"{NAME_MAX} bytes, a path {PATH_MAX - 1})")
    return path


def _shown(text: str, limit: int = 80) -> str:
    """A value for an error line: quoted, and shortened when long (a 5000-character name still gives a line
    one can read)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _name_option(name: str, what: str) -> str:
    """A name that becomes one folder or file name under the results directory (safe_name's rule)."""
    if len(name) > MAX_NAME:
        raise UserError(f"{what} {_shown(name)}: expected at most {MAX_NAME} characters")
    return safe_name(name, what)


def _emit(obj: Any, as_json: bool, line: str) -> None:
    if as_json:
        print(json.dumps(obj, sort_keys=True, default=str))
    else:
        say(line)


@app.command()
def prepare(
    set_: SetOpt = None,
    budget: BudgetOpt = None,
    encoder: Annotated[str | None, typer.Option(help="dinov2: extract Mirai-I features for a code folder.")] = None,
    weights: Annotated[str | None, typer.Option(help="DINOv2 state dict (local file; never downloaded).")] = None,
    hub: Annotated[str | None, typer.Option(help="Local torch.hub directory of the DINOv2 code.")] = None,
    model: Annotated[str, typer.Option(help="Hub entry point.")] = "dinov2_vitb14",
    images: Annotated[str | None, typer.Option(help="ImageFolder the codes were extracted from.")] = None,
    codes: Annotated[str | None, typer.Option(help="LlamaGen code folder.")] = None,
    out: Annotated[str | None, typer.Option(help="Feature shard folder (data.features_dir).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Image size the codes were made at.")] = None,
    grid: Annotated[int | None, typer.Option(help="Token grid side (default: from the codes).")] = None,
    resize: Annotated[str, typer.Option(help="DINOv2 input resize: interpolate (official: float bicubic, no "
                                             "antialias) | pil (antialiased PIL bicubic).")] = "interpolate",
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit and cache the tokenizer and token codes, or (--encoder dinov2) extract DINOv2 features."""

    from mirai_lab.data.tokens import prepare_tokens
    from mirai_lab.foresight.dinov2 import prepare_dinov2

    if encoder is not None:
        if encoder != "dinov2":
            raise UserError(f"--encoder {encoder!r}: expected dinov2 (mtm and pixel-ae are trained by train)")
        missing = [name for name, v in (("--weights", weights), ("--images", images), ("--codes", codes),
                                        ("--out", out)) if not v]
        if missing:
            raise UserError(f"--encoder dinov2 needs {', '.join(missing)}")

        info = prepare_dinov2(weights, images, codes, out, grid, hub=hub, model=model, image_size=image_size,
                              resize=resize)
        _emit(info, as_json, f"dinov2 features: {info['images']} images x {info['n_aug']} crops, grid "
              f"{info['grid']}, dim {info['dim']}; {info['written']} shards written, {info['skipped']} kept "
              f"-> {info['out']}")
        return
    overrides = parse_set(set_ or [])
    cfg = configure(None, overrides, budget)
    check_used(overrides, [cfg], "prepare")
    # cache_dir(root) without its mkdir: the folder is made by the first cache file written, so that
    # a refused input (a missing data.codes_dir) leaves none behind
    data = prepare_tokens(cfg.data, cfg.tokenizer, cache_dir(_root(results_dir), create=False))
    mse = None if data.recon_mse is None else round(data.recon_mse, 5)
    info = {"dataset": cfg.data.dataset, "images": len(data.codes), "train": len(data.train_idx),
            "val": len(data.val_idx), "grid": list(data.grid), "codebook": data.vocab_size,
            "recon_mse_val": mse, "cache_key": data.key}
    quality = f"validation pixel MSE {mse:.4f}" if mse is not None else "no decoder (codes only)"
    _emit(info, as_json, f"tokens {data.key}: {cfg.data.dataset} {info['images']} images -> "
          f"{data.grid[0]}x{data.grid[1]} grid, {data.vocab_size} codes, {quality}")


@app.command()
def train(
    spec: Annotated[Path | None, typer.Argument(help="TOML spec (tables data, model, train, foresight, eval).")] = None,
    set_: SetOpt = None,
    budget: BudgetOpt = None,
    seed: Annotated[int | None, typer.Option(help="Shortcut for --set train.seed=N.")] = None,
    tracker: TrackerOpt = None,
    log_every_s: LogEveryOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train one run (or resume it, or report it if it is already done)."""

    from mirai_lab.training.progress import select_interval
    from mirai_lab.training.run import execute
    from mirai_lab.training.trainer import Diverged

    tracking.select(tracker)
    select_interval(log_every_s)

    overrides = parse_set(set_ or [])
    if seed is not None:
        overrides["train.seed"] = seed
    cfg = configure(load_spec_file(_path_option(spec, "SPEC")) if spec else None, overrides, budget)
    check_used(overrides, [cfg], "this run")

    try:
        final, run_path, skipped = execute(cfg, _root(results_dir), bar=not as_json)
    except Diverged as exc:
        raise UserError(f"run diverged: {exc} (status.json says failed)") from None
    if not is_main_process():
        return
    summary = {k: v for k, v in final.items() if not isinstance(v, dict)}
    head = "already done" if skipped else "done"
    metrics = ", ".join(f"{k} {final[k]:.4g}" for k in ("val_nll", "fid_domain", "is_domain", "class_acc")
                        if k in final)
    _emit({**summary, "run_dir": str(run_path), "skipped": skipped}, as_json,
          f"run {final['run_id']} {head}: {metrics}; wall {final.get('wall_s', 0):.0f}s -> {run_path}")


@app.command()
def sample(
    run: Annotated[str, typer.Argument(help="Run id or run directory.")],
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_SAMPLES, help="Number of samples.")] = 64,
    cfg_scale: Annotated[float | None, typer.Option("--cfg", help="CFG scale (default: the run's eval.cfg_scale).")]
    = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Sampling seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output PNG.")] = Path("samples.png"),
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw class-conditional samples from a run's EMA weights into a PNG grid."""

    import torch

    from mirai_lab.evaluate.evaluator import write_sample_grid
    from mirai_lab.model.sample import sample_tokens
    from mirai_lab.training.run import load_trained

    if cfg_scale is not None:
        finite(cfg_scale, "--cfg")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {str(out)!r}: expected a .png path")
    cfg, model, data = load_trained(run, _root(results_dir))
    labels = torch.arange(n) % data.num_classes

    e = cfg.eval
    codes = sample_tokens(model, labels, e.cfg_scale if cfg_scale is None else cfg_scale, e.temperature, e.top_k,
                          e.top_p, generator=torch.Generator().manual_seed(seed))
    write_sample_grid(data.tokenizer.decode(codes), labels, data.num_classes, out,
                      per_class=max(1, -(-n // data.num_classes)))
    scale = e.cfg_scale if cfg_scale is None else cfg_scale
    _emit({"run": run, "n": n, "cfg_scale": scale, "seed": seed, "out": str(out)}, as_json,
          f"{n} samples of run {run} -> {out}")


@app.command(name="eval")
def eval_(
    run: Annotated[str | None, typer.Argument(help="Run id or directory (omit with --floors).")] = None,
    floors_: Annotated[bool, typer.Option("--floors", help="Print the real-vs-real / noise floors.")] = False,
    n: Annotated[int | None, typer.Option("--n", min=4, max=MAX_SAMPLES,
                                          help="Sample count (default: eval.n_samples_final).")] = None,
    extractor: Annotated[str | None, typer.Option(help="domain | inception-v3-compat")] = None,
    set_: SetOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute a run's final metrics, or print the floors of the data set."""

    from mirai_lab.training.run import eval_floors, eval_run

    root = _root(results_dir)
    if extractor is not None and extractor not in ("domain", "inception-v3-compat"):
        raise UserError(f"--extractor {extractor!r}: expected domain or inception-v3-compat")
    if run is None and not floors_:
        raise UserError("give a RUN to evaluate, or --floors")
    if run is not None:
        out = eval_run(run, root, n, extractor)
        _emit(out, as_json, json.dumps(out, indent=2, default=str))
    if floors_:
        out = eval_floors(root, set_ or [], n)
        _emit(out, as_json, json.dumps(out, indent=2, default=str))


@app.command()
def sweep(
    axis: Annotated[str | None, typer.Option(help="Built-in axis: injection, layout, source, layer, k, encoder, "
                                                   "visibility or schedule.")] = None,
    experiment: Annotated[Path | None, typer.Option(help="Any experiment spec (TOML).")] = None,
    set_: SetOpt = None,
    budget: BudgetOpt = None,
    seeds: Annotated[int | None, typer.Option(min=1, max=MAX_SEEDS,
                                              help="Number of seeds (0..n-1); default: the spec's.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Runs trained at once on this machine.")] = 1,
    storage: Annotated[str | None, typer.Option(help="Optuna storage shared by workers: journal:PATH, "
                                                     "postgresql://... (default with --workers > 1: a journal "
                                                     "file beside the manifest).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Train failed runs again.")] = False,
    rerun_stale: Annotated[bool, typer.Option("--rerun-stale", help="Train again the runs an older code version "
                                                                     "computed (docs/provenance.md).")] = False,
    name: NameOpt = None,
    variant_seeds: Annotated[list[str] | None, typer.Option(
        "--variant-seeds", help="VARIANT=N: train only the first N seeds of one variant (repeatable; the "
                                "adaptive rounds use it to add seeds where they are needed).")] = None,
    tracker: TrackerOpt = None,
    log_every_s: LogEveryOpt = None,
    adaptive: AdaptiveOpt = None,
    margin: MarginOpt = None,
    max_seeds: MaxSeedsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the run table (an adaptive sweep's first look "
                                                            "and its planned looks) and a time estimate; do "
                                                            "nothing.")] = False,
    results_dir: ResultsOpt = None,
    threads: Annotated[int | None, typer.Option(min=1, max=1024, help="Torch threads per run (default: the "
                                                                      "cores shared among --workers).")] = None,
    heartbeat_s: Annotated[int, typer.Option(min=1, max=86_400, help="Claim heartbeat of workers sharing a "
                                                                     "--storage, in seconds; a worker silent for 3 "
                                                                     "beats loses its run to another.")] = 30,
    as_json: JsonOpt = False,
) -> None:
    """Expand an experiment over its axes and seeds and train every run once."""

    from mirai_lab.experiments.adaptive import STEP, Design, adaptive_options, run_adaptive
    from mirai_lab.experiments.dry_run import first_look
    from mirai_lab.experiments.request import SweepRequest
    from mirai_lab.experiments.sweep_verb import run_sweep
    from mirai_lab.training.progress import select_interval

    tracking.select(tracker)
    select_interval(log_every_s)

    if (axis is None) == (experiment is None):
        raise UserError("give exactly one of --axis NAME or --experiment FILE")
    spec_path = axis_spec_path(axis) if axis is not None else _path_option(experiment, "--experiment")  # type: ignore
    if name is not None:
        _name_option(name, "--name")
    # checked on every path (--dry-run, workers included): a value ignored there is not a bad one let through
    options = adaptive_options(spec_path, adaptive=adaptive, margin=margin, max_seeds=max_seeds,
                               max_minutes=max_minutes, seeds=seeds)
    if options is not None:
        given = {"--storage": storage is not None, "--variant-seeds": bool(variant_seeds),
                 "--retry-failed": retry_failed, "--rerun-stale": rerun_stale}
        ignored = [flag for flag, on in given.items() if on]
        if ignored:
            raise UserError(f"an adaptive sweep trains its own rounds on this machine (--workers N) and chooses each "
                            f"variant's seeds: drop {', '.join(ignored)}")
    request = SweepRequest(spec=spec_path, command=_typed_command(), set_items=tuple(set_ or []), budget=budget,
                           seeds=seeds, name=name, variant_seeds=parse_variant_seeds(variant_seeds or []) or None,
                           workers=workers, threads=threads, storage=storage, heartbeat_s=heartbeat_s,
                           retry_failed=retry_failed, rerun_stale=rerun_stale, dry_run=dry_run)
    if options is not None and not dry_run:
        out = run_adaptive(request, _root(results_dir), options, as_json=as_json)
        verdicts = ", ".join(f"{v} {d}" + (f" (needs {out['seeds_needed'][v]} seeds)" if v in out["seeds_needed"]
                                           and d == "unresolved" else "") for v, d in out["verdicts"].items())
        _emit(out, as_json, f"adaptive sweep {out['name']}: looks at {out['looks']} seeds, intervals at "
              f"{100 * out['level']:.4g}%; {out['stopped']}.\nVerdicts on {out['metric']} at budget "
              f"{out['budget']}: {verdicts or 'none'}. Next: `mirai-lab report {out['name']}`; "
              f"`mirai-lab robust {out['name']} --vary budget=standard` checks them at a neighbouring budget.")
        return
    looks = None
    if options is not None:  # a dry run of an adaptive sweep shows its first look and the looks planned after it
        looks = {**Design(options.first, STEP, options.max_seeds, margin=options.margin).to_json(),
                 "max_minutes": options.max_minutes}
        request = first_look(request, _root(results_dir), options.first, options.from_spec)
    out = run_sweep(request, _root(results_dir), as_json=as_json, adaptive=looks)
    if as_json and out is not None:
        print(json.dumps(out, sort_keys=True, default=str))


@app.command()
def tune(
    source: Annotated[str, typer.Option(help="ema | bidirectional (mtp is an injection level: --set "
                                             "foresight.injection=mtp in a sweep).")] = "ema",
    trials: Annotated[int, typer.Option(min=1, max=MAX_TRIALS, help="Total trials in the study, the first the "
                                                                     "default coefficient.")] = 20,
    budget: Annotated[str, typer.Option(help="Run length of every run.")] = "quick",
    objective: Annotated[str, typer.Option(help="val_nll | fid_domain: the trial's final value minus the "
                                                "baseline's, paired by seed and averaged over --seeds "
                                                "(val_nll: the less noisy at the embedded budgets).")]
    = DEFAULT_OBJECTIVE,
    seeds: Annotated[int, typer.Option(min=1, max=MAX_SEEDS, help="Seeds per trial (0..n-1), each paired with "
                                                                   "the baseline's.")] = 2,
    rescore: Annotated[int, typer.Option(min=0, max=MAX_TRIALS, help="Top trials trained on 3 more seeds before "
                                                                      "the winner is chosen on all seeds pooled.")]
    = 3,
    confirm_seeds: Annotated[int, typer.Option(min=3, max=MAX_SEEDS, help="Fresh seeds on which the winner is "
                                                                           "compared with the default and the "
                                                                           "baseline.")] = 5,
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Runs of the baseline, rescoring and "
                                                                       "confirmation blocks trained at once (trials "
                                                                       "run one at a time).")] = 1,
    pruner: Annotated[str, typer.Option(help="median | hyperband | none (on the running paired val_nll "
                                             "difference).")] = "median",
    per_head: Annotated[bool, typer.Option("--per-head", help="One coefficient per head.")] = False,
    search_warmup: Annotated[bool, typer.Option("--search-warmup", help="Also tune warmup_frac.")] = False,
    search_schedule: Annotated[bool, typer.Option("--search-schedule", help="Also tune the schedule.")] = False,
    search_block: Annotated[bool, typer.Option("--search-block", help="Also tune the student block.")] = False,
    study: Annotated[str | None, typer.Option(help="Study name (default tune-<source>-<budget>, plus the settings "
                                                   "that differ from the defaults).")] = None,
    storage: Annotated[str | None, typer.Option(help="sqlite:///F (one process; the default under "
                                                     "results/studies), journal:PATH or postgresql://...")] = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the spec and tune.json (default "
                                                  "<results>/tuned/<study>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the study plan (trials, seeds, rescoring, "
                                                            "confirmation block, time); train and write "
                                                            "nothing.")] = False,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tune the alignment coefficients with Optuna on the paired difference to the baseline, confirm the
    winner on fresh seeds and export it as an experiment spec."""

    from mirai_lab.experiments.tune import TuneOptions
    from mirai_lab.experiments.tune_study import run_tune

    if study is not None:
        _name_option(study, "--study")
    opts = TuneOptions(source=source, trials=trials, budget=budget, objective=objective, pruner=pruner,
                       per_head=per_head, search_warmup=search_warmup, search_schedule=search_schedule,
                       search_block=search_block, study=study, storage=storage, base=parse_set(set_ or []),
                       seeds=seeds, rescore=rescore, confirm_seeds=confirm_seeds, workers=workers)
    folder = out and _path_option(out, "--out")
    info = run_tune(opts, _root(results_dir), folder, quiet=as_json, command=_typed_command(), dry_run=dry_run)
    if dry_run:
        if as_json:
            print(json.dumps(info, sort_keys=True, default=str))
        return
    winner, counts = info["winner"], info["counts"]
    pooled = "" if winner["pooled"] is None else f", {winner['pooled']:+.4g} on the pooled rescoring seeds"
    _emit(info, as_json, "\n".join([
        f"study {info['study']}: {counts['trials']} trials ({counts['complete']} complete, {counts['pruned']} "
        f"pruned); winner trial {winner['trial']} {winner['params']}: paired Δ {objective} {winner['value']:+.4g} "
        f"on the trial's seeds{pooled} -> {info['spec']}",
        *info["confirmation"]["lines"]]))


@app.command()
def report(
    sweeps: Annotated[list[str], typer.Argument(help="Sweep names under <results>/sweeps.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default <results>/reports/<sweeps>).")] = None,
    adjust: Annotated[str, typer.Option(help="Table-wide error control of the verdicts over each sweep's rows: "
                                             "none (per row), holm (family-wise), bh (false discoveries).")]
    = "none",
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tables (md, csv, tex), figures and report.md from finished sweeps."""

    from mirai_lab.experiments.reproduce import write_report_environment
    from mirai_lab.report.write import write_report

    if adjust not in ("none", "holm", "bh"):
        raise UserError(f"--adjust {adjust!r}: expected none, holm or bh")
    for name in sweeps:
        _name_option(name, "sweep")
    if out is None and len("+".join(sweeps)) > MAX_NAME:
        raise UserError(f"{len(sweeps)} sweeps name a report folder of {len('+'.join(sweeps))} characters: expected "
                        f"at most {MAX_NAME}; give --out FOLDER")
    root = _root(results_dir)
    target = _path_option(out, "--out") if out is not None else reports_dir(root) / "+".join(sweeps)
    path = write_report(root, sweeps, target, command=_typed_command(), adjust=adjust)
    write_report_environment(root, sweeps, target)
    _emit({"report": str(path), "folder": str(target), "sweeps": sweeps, "adjust": adjust}, as_json,
          f"report -> {path}")


@app.command()
def confirm(
    sweep_name: Annotated[str, typer.Argument(metavar="SWEEP", help="A finished sweep under <results>/sweeps.")],
    seeds: Annotated[int, typer.Option(min=3, max=MAX_SEEDS, help="Fresh seeds per row (a disjoint block).")] = 5,
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Runs trained at once on this machine.")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the fresh runs, do nothing.")] = False,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train every resolved row and the baseline again on fresh seeds: replicated, not replicated or inconclusive."""

    from mirai_lab.experiments.confirm import confirm_sweep

    record = confirm_sweep(_root(results_dir), _name_option(sweep_name, "sweep"), seeds=seeds, workers=workers,
                           command=_typed_command(), dry_run=dry_run, as_json=as_json)
    rows = [f"{v} {m}: {r['outcome']}" for v, ms in record.get("rows", {}).items() for m, r in ms.items()]
    _emit(record, as_json, "confirm " + sweep_name + ": " + ("; ".join(rows) or record.get("note", "dry run")))


@app.command()
def robust(
    sweep_name: Annotated[str, typer.Argument(metavar="SWEEP", help="A finished sweep under <results>/sweeps.")],
    vary: Annotated[list[str] | None, typer.Option(
        help="A neighbouring setting, repeatable: field=0.5x,1.5x (factors of each run's value), field=v1,v2 "
             "(values of any dotted config field) or budget=NAME (the same runs at another budget).")] = None,
    seeds: Annotated[int, typer.Option(min=3, max=MAX_SEEDS, help="Seeds 0..N-1 per setting.")] = 5,
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Runs trained at once on this machine.")] = 1,
    rows: Annotated[str, typer.Option(help="resolved (the baseline and the rows the first look settled) | all.")]
    = "resolved",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print each setting's runs, do nothing.")] = False,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the baseline and the rows again at neighbouring settings: does each verdict hold, or flip?"""

    from mirai_lab.experiments.robust import robust_sweep, summary_lines

    record = robust_sweep(_root(results_dir), _name_option(sweep_name, "sweep"), vary=vary or [], seeds=seeds,
                          workers=workers, rows=rows, command=_typed_command(), dry_run=dry_run, as_json=as_json)
    if as_json or record.get("dry_run"):
        _emit(record, as_json, f"robust {sweep_name}: dry run of {len(record['settings'])} setting(s)")
        return
    for line in summary_lines(record) or [record.get("note", "")]:
        say(f"robust {sweep_name}: {line}")


@app.command()
def plan(
    sweep_name: Annotated[str, typer.Argument(metavar="SWEEP", help="A sweep under <results>/sweeps.")],
    halfwidth: Annotated[float, typer.Option(help="Requested half-width of each difference's interval.")] = 0.01,
    metric: Annotated[str, typer.Option(help="val_nll | fid_domain")] = "val_nll",
    workers: Annotated[int, typer.Option(min=1, help="Runs you would train at once (divides the wall time).")] = 1,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Seeds each variant needs for a requested interval half-width, and the wall time on this machine."""

    from mirai_lab.report.seed_plan import format_plan, plan_seeds

    info = plan_seeds(_root(results_dir), _name_option(sweep_name, "sweep"), halfwidth, metric, workers)
    if as_json:
        _emit(info, True, "")
    else:
        print(format_plan(info))  # plain text: rich would wrap the table at 80 columns in a pipe


@app.command()
def reproduce(
    table: Annotated[str, typer.Argument(help="table1 | table2 | table3 | table4 (built-in specs).")],
    budget: BudgetOpt = None,
    seeds: Annotated[int | None, typer.Option(min=1, max=MAX_SEEDS, help="Seeds (default: the spec's).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Runs trained at once.")] = 1,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the run table and the report folder, do "
                                                            "nothing.")] = False,
    tracker: TrackerOpt = None,
    adaptive: AdaptiveOpt = None,
    margin: MarginOpt = None,
    max_seeds: MaxSeedsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    results_dir: ResultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a paper-table sweep, then write results/<table>/ (tables, figures, COMMAND, environment).

    At another budget, seed count or --set the folder is named after them (results/table2-smoke-s1/)."""

    from mirai_lab.experiments.adaptive import adaptive_options
    from mirai_lab.experiments.reproduce import reproduce_table

    tracking.select(tracker)

    spec = SPECS_DIR / f"{table}.toml"  # an unknown table is refused by reproduce_table with the valid names
    options = adaptive_options(spec, adaptive=adaptive, margin=margin, max_seeds=max_seeds, max_minutes=max_minutes,
                               seeds=seeds) if spec.is_file() else None
    # with --json, stdout holds the JSON alone: the sweep's own tables go to stderr with its messages
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        path = reproduce_table(table, _root(results_dir), budget=budget, seeds=seeds, workers=workers,
                               set_items=set_ or [], command=_typed_command(), dry_run=dry_run, adaptive=options)
    _emit({"table": table, "path": str(path), "dry_run": dry_run}, as_json, f"{table} -> {path}")


@app.command()
def bench(
    out: Annotated[Path | None, typer.Option(help="Folder for results.md and results.csv (default <results>/bench; "
                                                  "the committed benchmarks/ is refreshed by `make bench`).")] = None,
    presets: Annotated[str, typer.Option(help="Comma-separated model presets (default cpu-s,cpu-m; "
                                              "gpt-b,tiny,cpu-s on cuda).")] = "",
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved rounds (medians, paired ratios).")] = 5,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer steps per round, no smoke sweep.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda (the trainer's device must be this one).")] = "cpu",
    batch: Annotated[int, typer.Option(min=0, help="Batch size (0: 64 on CPU presets, 256 on gpt-b and up).")] = 0,
    sections: Annotated[str, typer.Option(help="Comma-separated sections: " + ",".join(SECTIONS) + ".")] = ",".join(
        SECTIONS),
    llamagen: Annotated[Path, typer.Option(help="A local clone of LlamaGen, timed beside gpt-b.")] = LLAMAGEN_DIR,
    set_: SetOpt = None,
    results_dir: ResultsOpt = None,
) -> None:
    """Time the real training step, sampling and evaluation against this machine's own peaks."""

    from mirai_lab.bench.suite import BenchOptions, run_bench

    names = [p.strip() for p in (presets or ("gpt-b,tiny,cpu-s" if device == "cuda" else "cpu-s,cpu-m")).split(",")
             if p.strip()]
    if not names:
        raise UserError(f"--presets {presets!r}: expected at least one preset name")
    for name in names:
        if name not in MODEL_PRESETS:
            raise UserError(f"--presets {name!r}: expected names from {', '.join(MODEL_PRESETS)}")
    root = _root(results_dir)
    chosen = tuple(x.strip() for x in sections.split(",") if x.strip())
    opts = BenchOptions(out=out or bench_dir(root), root=root, presets=names, repeats=repeats, quick=quick,
                        device=device, batch=batch, sections=chosen, overrides=parse_set(set_ or []),
                        llamagen=llamagen, command=_typed_command())
    path = run_bench(opts, console)
    say(f"benchmarks -> {path}")


def _typed_command() -> str:
    """The command as the user typed it (the CLI entry point alone reads argv): what manifests,
    reports and COMMAND files record, so that anyone can run it again."""
    return "mirai-lab " + shlex.join(sys.argv[1:])


def main() -> None:
    """Entry point: user errors and usage errors become one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        say(f"error: {one_line(str(exc))}")
        sys.exit(2)
    except ClickException as exc:
        say(f"error: {one_line(exc.format_message())}")
        sys.exit(2)
    except typer.Abort:
        say("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        say("interrupted: finished runs and checkpoints are kept; run the same command to resume")
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
