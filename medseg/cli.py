"""The ``medseg`` command line (typer + rich). Thin: parse, validate the config, call the core."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medseg import __version__
from medseg.errors import EXIT_FAILED_CASES, Interrupted, MedsegError
from medseg.keys import SWEEP_ID_TAG, check_sweep_id
from medseg.norm_registry import NORMS
from medseg.progress import rich_progress, silent
from medseg.study.rules import EVALUATIONS, EXECUTORS, JOBS, LR_RULE, NEGLIGIBLE, PLATEAU_DELTA, SLURM_TIMEOUT_MIN

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="3D U-Net segmentation of CT/MRI volumes with a choice of normalization, tracked in MLflow.")
console = Console(stderr=True)
out = Console()


def _version(value: bool):
    if value:
        out.print(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True)):
    """Global options (``--debug`` is read by :func:`run_cli` from the arguments)."""


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"



def _say(text: str) -> None:
    """Print a log line as it is (no rich markup: paths and messages may hold square brackets)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)

@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (see configs/); "
                                          "with --resume, the run's own config.yaml is used."),
    data: Path | None = typer.Option(None, "--data", "-d", help="MSD-layout dataset folder (overrides data.root)."),
    resume: str | None = typer.Option(None, "--resume", help="Continue a run from its last checkpoint, in the "
                                         "same MLflow run: a run folder or an MLflow run id."),
    fold: int | None = typer.Option(None, "--fold", help="Validation fold (overrides data.fold)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeatable)."),
    experiment: str | None = typer.Option(None, "--experiment", help="MLflow experiment name."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI "
                                               "(default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic algorithms: identical results "
                                       "for the same config and seed on CPU (sets train.deterministic)."),
    offline: bool = typer.Option(False, "--offline", help="Log to the local store sqlite:///mlflow.db whatever "
                                 "the config or MLFLOW_TRACKING_URI say."),
    register: str | None = typer.Option(None, "--register", help="Register the best model in the MLflow Model "
                                        "Registry under this name (sets tracking.register_model)."),
    alias: str | None = typer.Option(None, "--alias", help="Alias of the registered version (default: champion; "
                                     "sets tracking.register_alias)."),
    init_from: str | None = typer.Option(None, "--init-from", help="Fine-tune: start from a trained model's weights "
                                         "(a model directory, models:/NAME@ALIAS or runs:/RUN_ID/medseg_model); "
                                         "layers that match in name and shape are loaded (sets train.init_from)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
):
    """Train a 3D U-Net on an MSD dataset and validate it on one fold; log everything to MLflow."""
    from medseg.config import check_resume_overrides, load_config

    if offline:
        tracking_uri = f"sqlite:///{Path('mlflow.db').resolve()}"
    overrides = list(set_) + _option_overrides({
        "data.root": data, "data.fold": fold, "tracking.experiment": experiment,
        "train.deterministic": "true" if deterministic else None, "tracking.register_model": register,
        "tracking.register_alias": alias, "tracking.tracking_uri": tracking_uri, "train.init_from": init_from})
    if alias and not register:
        raise MedsegError("--alias names the registered version: use it with --register NAME", "--alias")
    resume_dir = None
    if resume:
        if config is not None:
            raise MedsegError("cannot be combined with --resume: a resumed run keeps its own config.yaml "
                              "(drop --config; --set may change where data and the store are)", "--config")
        check_resume_overrides(overrides)
        from medseg.training.run import find_run_dir
        resume_dir = find_run_dir(resume, tracking_uri)
        config = resume_dir / "config.yaml"
    elif config is None:
        raise MedsegError("--config is required (or --resume RUN_DIR)", "medseg train")
    cfg = load_config(config, overrides)  # a bad config is refused here, before torch is imported
    from medseg.training.run import run_training
    result = run_training(cfg, resume_dir=resume_dir, progress=silent if quiet else rich_progress,
                          log=(lambda s: None) if quiet else _say)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        _print_training_result(cfg, result)


def _option_overrides(values: dict) -> list[str]:
    """``section.key=value`` overrides for the command-line options that were given (not None)."""
    return [f"{key}={value}" for key, value in values.items() if value is not None and value != ""]


def _print_training_result(cfg, result) -> None:
    """The validation table, the model folder, the MLflow run and the registered version."""
    table = Table(title=f"Validation, fold {cfg.data.fold} (best epoch {result.best_epoch + 1})")
    table.add_column("label"), table.add_column("Dice"), table.add_column("HD95 (mm)")
    for name, d in result.val_dice.items():
        table.add_row(name, _fmt(d), _fmt(result.val_hd95[name]))
    table.add_row("mean", _fmt(sum(result.val_dice.values()) / len(result.val_dice)), "")
    out.print(table)
    out.print(f"model: {result.model_dir}\nMLflow run: {result.run_id}")
    if result.registered:
        alias = cfg.tracking.register_alias
        out.print(f"registered: {result.registered}" + (f" (models:/{cfg.tracking.register_model}@{alias})"
                                                         if alias else ""))


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory (written by medseg train)."),
    data: Path = typer.Option(..., "--data", "-d", help="Labelled MSD-layout dataset folder."),
    output: Path = typer.Option(Path("evaluation.csv"), "--output", "-o", help="Per-case CSV to write."),
    fold_only: bool = typer.Option(False, "--fold-only", help="Only the model's validation cases (from its run's split.json)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    no_hd95: bool = typer.Option(False, "--no-hd95", help="Skip HD95 (faster)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Score a model on labelled cases in their original geometry: per-case CSV and a summary table."""
    from medseg.atomic import write_csv
    from medseg.data import read_dataset
    from medseg.devices import resolve_device
    from medseg.inference.evaluate import evaluate_cases
    from medseg.inference.predictor import Predictor
    from medseg.models.directory import load_model_dir

    loaded = load_model_dir(model, device=resolve_device(device))
    spec = read_dataset(data)
    case_ids = None
    if fold_only:
        split = model.parent / "split.json"
        if not split.is_file():
            raise MedsegError("--fold-only needs split.json beside the model directory", split)
        case_ids = json.loads(split.read_text())["val"]
    rows, summary = evaluate_cases(Predictor(loaded), spec, case_ids, hd95=not no_hd95,
                                   progress=silent if quiet else rich_progress)
    write_csv(rows, output)
    table = Table(title=f"{len(rows)} cases, {spec.name}")
    table.add_column("label"), table.add_column("mean Dice"), table.add_column("mean HD95 (mm)")
    for name, m in summary.items():
        table.add_row(name, _fmt(m["dice"]), _fmt(m["hd95"]))
    if summary:
        table.add_row("mean", _fmt(sum(m["dice"] for m in summary.values()) / len(summary)), "")
    out.print(table)
    out.print(f"per-case CSV: {output}")


@app.command()
def fingerprint(
    data: Path = typer.Option(..., "--data", "-d", help="MSD-layout dataset folder."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where the fingerprint is cached "
                                          "(default: the config schema's data.cache_dir)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Check every image/label pair and print the dataset fingerprint (cached)."""
    from medseg.config import DataConfig
    from medseg.data import load_or_compute_fingerprint, read_dataset

    cache_dir = cache_dir or DataConfig.model_fields["cache_dir"].default
    spec = read_dataset(data)
    fp, path = load_or_compute_fingerprint(spec, cache_dir, silent if quiet else rich_progress)
    summary = {k: v for k, v in fp.items() if k != "cases"}
    out.print_json(json.dumps(summary))
    if not quiet:
        console.print(f"cached at {path}")


@app.command()
def plan(
    data: Path = typer.Option(..., "--data", "-d", help="MSD-layout dataset folder."),
    device: str = typer.Option("cpu", "--device", help="What the network is planned for: cpu or cuda (filters "
                               "start at 16 on a CPU, 32 on a GPU, as nnU-Net)."),
    memory_gb: float | None = typer.Option(None, "--memory-gb", help="Training memory budget in GB (default: 2 "
                                           "on cpu, 8 on cuda, nnU-Net's reference)."),
    output: Path = typer.Option(Path("plan.json"), "--output", "-o", help="Where the plan is written (JSON)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where the fingerprint is cached "
                                          "(default: the config schema's data.cache_dir)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Plan the network from the dataset (nnU-Net's rules): target spacing, patch, batch, levels,
    strides, kernel sizes and filters, with the reason for each; print it and write it as JSON."""
    from medseg.atomic import atomic_write_text
    from medseg.config import DataConfig
    from medseg.data import load_or_compute_fingerprint, read_dataset
    from medseg.models.planner import plan_network

    if output.is_dir():
        raise MedsegError("is a folder: give a file name for the plan", output)
    spec = read_dataset(data)
    fp, _ = load_or_compute_fingerprint(spec, cache_dir or DataConfig.model_fields["cache_dir"].default,
                                        silent if quiet else rich_progress)
    result = plan_network(fp, device, memory_gb)
    table = Table(title=f"network plan for {spec.name or data} on {device} ({result.memory_gb:g} GB budget)")
    table.add_column("level"), table.add_column("stride"), table.add_column("kernel"), table.add_column("filters")
    for i, (s, k, f) in enumerate(zip(result.strides, result.kernel_sizes, result.filters)):
        table.add_row(str(i), "x".join(map(str, s)), "x".join(map(str, k)), str(f))
    out.print(table)
    out.print(f"target spacing {' x '.join(f'{v:.3g}' for v in result.target_spacing)} mm, patch "
              f"{' x '.join(map(str, result.patch_size))}, batch {result.batch_size}, estimated "
              f"{result.estimated_memory_gb:.2f} GB per training iteration")
    for reason in result.reasons:
        out.print(f"- {escape(reason)}")
    atomic_write_text(output, json.dumps(result.to_dict(), indent=1))
    if not quiet:
        console.print(f"plan written to {output}")


@app.command()
def predict(
    model: str = typer.Option(..., "--model", "-m", help="Model directory (written by medseg train), or an MLflow "
                              "model URI: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/medseg_model."),
    input: Path = typer.Option(..., "--input", "-i", help="NIfTI file, folder of NIfTI files, DICOM series folder, "
                                                          "or folder of DICOM series folders."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (not inside the input folder)."),
    overlap: float | None = typer.Option(None, "--overlap", min=0.0, max=0.95, help="Sliding-window overlap "
                                         "(default: the model's, as validated in training)."),
    sw_batch_size: int | None = typer.Option(None, "--sw-batch-size", min=1, help="Windows per forward pass "
                                             "(default: the model's)."),
    tta: bool = typer.Option(False, "--tta", help="Mirroring test-time augmentation (8 flips, averaged softmax)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (AMP bf16 on cuda)."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write <case>_probabilities.npz (float16)."),
    largest_component: bool = typer.Option(False, "--largest-component", help="Keep the largest connected component per label."),
    series_uid: str | None = typer.Option(None, "--series-uid", help="Series to use in DICOM folders with several."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (default: skip them)."),
    output_format: str = typer.Option("nifti", "--output-format", help="nifti (<case>_seg.nii.gz), dicom-seg (a "
                                      "DICOM Segmentation <case>_seg.dcm) or rtstruct (an RT Structure Set "
                                      "<case>_rtstruct.dcm); the DICOM outputs reference the input series."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store of a models:/ or runs:/ "
                                            "model (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Segment volumes; outputs have exactly the input's shape and affine, plus volumes.csv (ml)."""
    from medseg.inference.batch import (
        check_output_dir,
        check_output_format,
        collect_inputs,
        predict_inputs,
    )
    from medseg.inference.segmenter import Segmenter
    from medseg.tracking import resolve_model_uri

    inputs = collect_inputs(input)
    check_output_format(output_format, inputs)  # before any work: a DICOM output needs DICOM inputs
    check_output_dir(output, input)
    model_dir = resolve_model_uri(model, tracking_uri)  # a folder, or downloaded from the MLflow store
    try:
        segmenter = Segmenter.load(model_dir, device=device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta,
                                   largest_component=largest_component)
    except ValueError as e:
        raise MedsegError(str(e), "--device") from None
    summary = predict_inputs(segmenter, inputs, output, overwrite=overwrite, save_probabilities=save_probabilities,
                             series_uid=series_uid, output_format=output_format,
                             progress=silent if quiet else rich_progress)
    table = Table(title=f"medseg predict -> {output}")
    for col in ("cases", "done", "skipped (exist)", "failed", "seconds", "s/case"):
        table.add_column(col)
    per = summary.seconds / max(1, len(summary.done))
    table.add_row(str(len(inputs)), str(len(summary.done)), str(len(summary.skipped)), str(len(summary.failed)),
                  f"{summary.seconds:.1f}", f"{per:.2f}")
    out.print(table)
    for name, said in summary.warnings.items():
        for msg in said:
            console.print(f"[bold yellow]warning:[/] {escape(f'{name}: {msg}')}", highlight=False, soft_wrap=True)
    for name, msg in summary.failed.items():
        console.print(f"[bold red]failed:[/] {escape(f'{name}: {msg}')}", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED_CASES)


@app.command()
def convert(
    input: Path = typer.Option(..., "--input", "-i", help="DICOM series folder."),
    output: Path = typer.Option(..., "--output", "-o", help="NIfTI file to write (.nii.gz)."),
    series_uid: str | None = typer.Option(None, "--series-uid", help="Series to convert when the folder holds several."),
):
    """Convert a DICOM series to NIfTI (SimpleITK ImageSeriesReader); lists the series found."""
    from medseg.data.dicom import dicom_to_nifti, find_series

    if not output.name.endswith((".nii.gz", ".nii")):
        raise MedsegError("output must end in .nii.gz or .nii", output)
    for s in find_series(input) if input.is_dir() else []:
        console.print(f"series {s}")
    path = dicom_to_nifti(input, output, series_uid)
    out.print(f"wrote {path}")


def _csv(text: str, cast, option: str) -> tuple:
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise MedsegError(f"expected a comma-separated list, got {text!r}", option) from None


def _folder_option(path: Path | None, option: str) -> None:
    """Refuse an output folder that cannot be one: the path, or a folder above it, is an existing file.
    Checked before any work, so that a sweep does not fail at its report after hours of training.

    Raises:
        MedsegError: naming ``option`` and the file in the way.
    """
    if path is None:
        return
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise MedsegError(f"{p} is a file, not a folder (a missing folder is created)", option)
            return


@app.command()
def sweep(
    config: Path = typer.Option(..., "--config", "-c", help="Base YAML config: fold, patch, augmentation, network "
                                "and train.lr at train.batch_size apply to every run."),
    data: Path | None = typer.Option(None, "--data", "-d", help="MSD-layout dataset folder (overrides data.root)."),
    norms: str = typer.Option(",".join(NORMS), "--norms", help="Comma-separated norms."),
    batch_sizes: str = typer.Option("1,2,3,4", "--batch-sizes", help="Comma-separated batch sizes."),
    seeds: int = typer.Option(2, "--seeds", min=1, help="Seeds per cell (first seed .. first seed + N - 1)."),
    first_seed: int = typer.Option(0, "--first-seed", min=0, help="The first seed: --first-seed 2 --seeds 1 adds "
                                   "seed 2 to a study as its own sweep (paired with seed 2 of any other sweep)."),
    budget_samples: int | None = typer.Option(None, "--budget-samples", min=1, help="Training patches per run "
                                                 "(the default rule; default: the config's epochs x iterations x "
                                                 "batch size)."),
    budget_iterations: int | None = typer.Option(None, "--budget-iterations", min=1, help="Iterations per run."),
    budget_minutes: float | None = typer.Option(None, "--budget-minutes", min=0.01, help="Training minutes per "
                                                   "run (iterations from a measured s/it)."),
    lr_rule: str = typer.Option(LR_RULE, "--lr-rule", help="Learning rate vs batch size: sqrt, linear or none."),
    evaluations: int = typer.Option(EVALUATIONS, "--evaluations", min=1, help="Validations per run (learning-curve points)."),
    fold: int | None = typer.Option(None, "--fold", help="Validation fold (overrides data.fold)."),
    set_: list[str] = typer.Option([], "--set", help="Override a base config value: section.key=value."),
    experiment: str | None = typer.Option(None, "--experiment", help="MLflow experiment name."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
    sweep_id: str | None = typer.Option(None, "--sweep-id", help="Name the sweep (default: a hash of its "
                                           "definition, so rerunning the same command continues it)."),
    report_dir: Path | None = typer.Option(None, "--report-dir", help="Report folder (default: "
                                              "<output_dir>/sweeps/<id>/report)."),
    jobs: int = typer.Option(JOBS, "--jobs", "-j", min=1, help="Children run at once on this machine (one GPU each "
                             "when there are GPUs, else the CPU threads split between them)."),
    plateau_delta: float = typer.Option(PLATEAU_DELTA, "--plateau-delta", min=0.0, help="A child whose last "
                                        "validation improved mean Dice by more than this is reported not converged."),
    executor: str = typer.Option(EXECUTORS[0], "--executor", help="local (subprocesses here), slurm (a submitit job "
                                 "array; pip install 'medseg\\[slurm]') or submitit-local (the slurm path, here)."),
    slurm_partition: str | None = typer.Option(None, "--slurm-partition", help="SLURM partition (--executor slurm)."),
    timeout_min: int = typer.Option(SLURM_TIMEOUT_MIN, "--timeout-min", min=1, help="Time limit per child in minutes "
                                    "(--executor slurm)."),
):
    """Train one model per (norm, batch size, seed) as child MLflow runs of one parent run, then report.

    Interrupted (Ctrl-C, SIGTERM), the same command continues: finished runs are skipped and the
    interrupted one resumes from its checkpoint.
    """
    from medseg.config import load_config
    from medseg.study.sweep import Execution, SweepSpec, run_sweep

    _folder_option(report_dir, "--report-dir")
    given = [(k, v) for k, v in (("samples", budget_samples), ("iterations", budget_iterations),
                                 ("minutes", budget_minutes)) if v is not None]
    if len(given) > 1:
        raise MedsegError("give at most one of --budget-samples, --budget-iterations, --budget-minutes", "medseg sweep")
    cfg = load_config(config, list(set_) + _option_overrides({
        "data.root": data, "data.fold": fold, "tracking.experiment": experiment, "tracking.tracking_uri": tracking_uri}))
    kind, value = given[0] if given else ("samples", cfg.train.epochs * cfg.train.iterations_per_epoch * cfg.train.batch_size)
    spec = SweepSpec(norms=_csv(norms, str, "--norms"), batch_sizes=_csv(batch_sizes, int, "--batch-sizes"),
                     seeds=tuple(range(first_seed, first_seed + seeds)), budget=kind, budget_value=float(value),
                     lr_rule=lr_rule, evaluations=evaluations)
    execution = Execution(executor=executor, jobs=jobs, slurm_partition=slurm_partition, timeout_min=timeout_min)
    sid, parent_id, status = run_sweep(cfg, spec, sweep_id=sweep_id, log=_say, execution=execution)
    _sweep_report(cfg, sid, parent_id, status, report_dir, tracking_uri, plateau_delta)


def _sweep_report(cfg, sid: str, parent_id: str, status: dict, report_dir: Path | None, tracking_uri: str | None,
                  plateau_delta: float) -> None:
    """Report a sweep that ran: the summary table, or why there is none; the failed children (exit 1)."""
    from medseg.study.report import build_report

    folder = report_dir or Path(cfg.output_dir) / "sweeps" / sid / "report"
    failed = {k: v for k, v in status.items() if v.startswith("failed")}
    if len(failed) < len(status):  # a report needs at least one finished child
        report = build_report(_uri(tracking_uri or cfg.tracking.tracking_uri), cfg.tracking.experiment, folder, sid,
                              plateau_delta=plateau_delta)
        out.print(_summary_table(report))
        out.print(_which_norm_table(report))
        out.print(f"sweep {sid}: parent MLflow run {parent_id}; report in {folder}")
    else:
        console.print(f"sweep {sid}: no child finished, so there is no report (parent MLflow run {parent_id})")
    for k, v in failed.items():
        console.print(f"[bold red]{escape(str(k))}:[/] {escape(str(v))}")
    if failed:
        raise typer.Exit(EXIT_FAILED_CASES)


def _uri(uri: str | None) -> str:
    from medseg.tracking import resolve_tracking_uri
    return resolve_tracking_uri(uri)


def _summary_table(report: dict) -> Table:
    from medseg.study.report import mean_std
    from medseg.study.statistics import THESE_NETWORKS_ONLY
    rising = sum(r["still_rising"] for r in report["rows"])
    table = Table(title=f"sweep {report['sweep_id']}: final models; primary CI with seeds as a random effect, "
                        f"± std over seeds ({report['converged']}/{len(report['rows'])} children met the plateau "
                        f"rule, {rising} still rising over the last third)")
    for col in ("norm", "batch", "seeds", "plateau rule", "still rising", "final Dice [95 % CI, seeds random]",
                "seed SD", "95 % CI, these networks", "s/it"):
        table.add_column(col)
    for s in report["summary"]:
        m = s["case_dice_mean"]
        random = ("-" if not math.isfinite(m) else f"{m:.3f} [{THESE_NETWORKS_ONLY}]"
                  if not math.isfinite(s["case_dice_re_low"]) else
                  f"{m:.3f} [{s['case_dice_re_low']:.3f}, {s['case_dice_re_high']:.3f}]")
        fixed = (f"[{s['case_dice_ci_low']:.3f}, {s['case_dice_ci_high']:.3f}]" if math.isfinite(m) else "-")
        sd = f"{s['seed_sd']:.3f}" if math.isfinite(s["seed_sd"]) else "-"
        table.add_row(s["norm"], str(s["batch_size"]), str(s["seeds"]), f"{s['converged']}/{s['seeds']}",
                      f"{s['still_rising']}/{s['seeds']}", random, sd, fixed,
                      mean_std(s, "seconds_per_iteration", ".3f"))
    return table


def _which_norm_table(report: dict) -> Table:
    """The report's answer: per batch size, the norm with the highest final Dice and the ones tied with it."""
    table = Table(title="which norm at which batch size (tie: the paired 95 % CI, seeds as a random effect, "
                        "contains 0; * see summary.md)")
    for col in ("batch size", "highest final Dice", "tied with it", "worse", "interval"):
        table.add_column(col)
    for r in report["which_norm"]:
        table.add_row(str(r["batch_size"]), r["best"], r["tied_with_best"], r["worse"], r["interval"])
    return table


def _holds_lines(result: dict) -> list[str]:
    """Whether each ranking of two norms holds in every sweep of a robustness report, one line each."""
    lines = []
    for h in result["holds"]:
        diffs = ", ".join(f"{v:+.3f}" for k, v in h.items() if k.endswith(": A - B"))
        ahead = f"{h['ahead']} ahead; " if h["ahead"] != "-" else ""
        lines.append(f"batch {h['batch_size']}, {h['norm_a']} - {h['norm_b']}: {h['ranking']} ({ahead}{diffs})")
    return lines


@app.command()
def report(
    experiment: str = typer.Option(..., "--experiment", "-e", help="MLflow experiment of the sweep."),
    sweep_ids: list[str] | None = typer.Option(None, "--sweep", help="Sweep id (default: the newest sweep). "
                                               "Repeat it (--sweep A --sweep B ...) for a robustness report: does "
                                               "the ranking of norms hold in every sweep, on the cells and seeds they "
                                               "all have (for example a learning-rate check)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Report folder (default: reports/<sweep id>, "
                                       "or reports/<A>+<B>... for several sweeps)."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log the report to the parent run (a robustness "
                                "report of several sweeps is never logged)."),
    pool: bool = typer.Option(False, "--pool", help="With several --sweep: report them as one study (one recipe, "
                              "different seeds or cells, e.g. a seed added with sweep --first-seed) instead of "
                              "asking whether their rankings agree."),
    plateau_delta: float = typer.Option(PLATEAU_DELTA, "--plateau-delta", min=0.0, help="A child whose last "
                                        "validation improved mean Dice by more than this is reported not converged."),
    negligible: float = typer.Option(NEGLIGIBLE, "--negligible", min=0.0, help="A paired difference in mean Dice "
                                     "whose whole 95 % CI lies within +-this is called no practical difference."),
):
    """Build a sweep's report (CSV, Markdown, PNG plots, paired statistics) from the MLflow store alone;
    with several --sweep, whether their rankings of norms agree, or with --pool one report over all of them."""
    from medseg.study.report import build_report, find_sweep
    from medseg.tracking import Tracker, existing_store

    _folder_option(output, "--output")
    uri = existing_store(tracking_uri)
    sweep_ids = sweep_ids or []
    for sid in sweep_ids:
        check_sweep_id(sid, "--sweep")
    if pool and len(sweep_ids) < 2:
        raise MedsegError("--pool needs two or more --sweep", "--pool")
    if len(sweep_ids) > 1:
        output = output or Path("reports") / "+".join(sweep_ids)
        if not pool:
            from medseg.study.robustness import build_robustness_report
            result = build_robustness_report(uri, experiment, sweep_ids, output, plateau_delta, negligible)
            out.print("does the ranking hold in every sweep? (CIs and Holm p: robustness.md)")
            for line in _holds_lines(result):
                out.print(f"  {line}", highlight=False, soft_wrap=True)
            out.print(f"report: {output / 'robustness.md'}")
            return
        from medseg.study.pooled import build_pooled_report
        result = build_pooled_report(uri, experiment, sweep_ids, output, plateau_delta, negligible)
    else:
        sweep_id = sweep_ids[0] if sweep_ids else None
        if output is None:  # reports/<the sweep's id>, an id read from the store: only a plain name names a folder
            _, parent = find_sweep(Tracker.client_for(uri), experiment, sweep_id)
            output = Path("reports") / check_sweep_id(parent.data.tags.get(SWEEP_ID_TAG, ""), "the store's sweep id",
                                                      hint="; give the report folder with --output")
        result = build_report(uri, experiment, output, sweep_id, log_to_parent=not no_log,
                              plateau_delta=plateau_delta, negligible=negligible)
    out.print(_summary_table(result))
    out.print(_which_norm_table(result))
    out.print(f"report: {output}")


@app.command()
def ui(
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="The store to show (default: the one "
                                               "medseg writes to: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    port: int = typer.Option(5000, "--port", min=1, max=65535),
):
    """Start the MLflow UI on 127.0.0.1 for medseg's tracking store, as a single-user server (one web
    worker, no background job runner), and print the runs page of each experiment. Ctrl-C or
    SIGTERM stops it, and the web server processes MLflow starts with it."""
    import os
    import signal
    import socket
    import subprocess

    from medseg.tracking import existing_store, runs_page_urls

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # MLflow logs a taken port and exits 0
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise MedsegError(f"port {port} on 127.0.0.1 is in use or not allowed ({e.strerror}): choose another "
                              "with --port", "medseg ui") from None
    uri = existing_store(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise MedsegError("this is already a tracking server: open it in a browser", uri)
    base = f"http://127.0.0.1:{port}"
    _say(f"MLflow UI for {uri} at {base} (starting; Ctrl-C stops it). Runs pages:")
    for name, url in runs_page_urls(uri, base):
        _say(f"  {name}: {url}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes for one user
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)  # its own process group: mlflow ui and its uvicorn
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    code = 130
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the whole group: `mlflow ui` does not stop its server itself
        except ProcessLookupError:
            pass
        proc.wait()
    raise typer.Exit(code)


def _click_exception_types() -> tuple[type, ...]:
    """The click exception classes typer raises: typer >= 0.17 bundles its own copy of click
    (``typer._click``), whose exceptions are not ``click.ClickException``; older typer uses click."""
    types = []
    try:
        from typer._click.exceptions import ClickException as bundled
        types.append(bundled)
    except ImportError:
        pass
    try:
        import click
        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def _abort_types() -> tuple[type, ...]:
    types: list[type] = [typer.Abort]
    try:
        from typer._click.exceptions import Abort as bundled
        types.append(bundled)
    except ImportError:
        pass
    return tuple(types)


def _usage_message(e: Exception) -> str:
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{e.format_message()}{hint}"


def run_cli(argv: list[str] | None = None) -> int:
    """Run the command line and map every outcome to one exit code (the error boundary).

    Exit codes: 0 success; 1 some cases (predict) or sweep children failed; 2 bad input
    or usage (a medseg error, a usage error, an OS error on a user's path, an MLflow error, out of
    memory); 130 interrupted (Ctrl-C or SIGTERM; a run saved its checkpoint); 3 an internal error
    (a bug: rerun with ``--debug`` and report the traceback). Every failure is one line on stderr;
    ``medseg --debug ...`` adds the traceback.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    from medseg.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])

    def fail(message: str, code: int) -> int:
        if debug:
            console.print_exception()
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return code

    try:
        rv = app(args=argv, prog_name="medseg", standalone_mode=False)
    except MedsegError as e:
        if isinstance(e, Interrupted):  # no import here: the boundary must work whatever failed
            console.print(f"[bold yellow]interrupted:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            return EXIT_INTERRUPTED
        return fail(str(e), EXIT_USAGE)
    except typer.Exit as e:
        rv = e.exit_code
    except (KeyboardInterrupt, *_abort_types()):
        console.print("[bold yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    except _click_exception_types() as e:
        code = getattr(e, "exit_code", EXIT_USAGE)
        return fail(_usage_message(e), code if code else EXIT_USAGE)
    except MemoryError:
        return fail("out of memory: use a smaller patch (sampling.patch_size), batch size or "
                    "--sw-batch-size, or a machine with more memory", EXIT_USAGE)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"{where}{e.strerror or e}", EXIT_USAGE)
    except Exception as e:  # noqa: BLE001 - the boundary: MLflow, torch OOM, or a bug
        name = type(e).__name__
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if "OutOfMemoryError" in name:
            return fail(f"out of memory on the device: {first}; use a smaller patch, batch size or "
                        "--sw-batch-size", EXIT_USAGE)
        if type(e).__module__.startswith("mlflow"):
            return fail(f"MLflow: {first}", EXIT_USAGE)
        return fail(f"internal error ({name}: {first}); rerun with --debug and report the traceback",
                    EXIT_INTERNAL)
    if isinstance(rv, int) and rv == EXIT_INTERRUPTED:
        console.print("[bold yellow]interrupted[/]")
    return rv if isinstance(rv, int) else EXIT_OK


def main() -> None:
    """The installed ``medseg`` entry point: exits with :func:`run_cli`'s code."""
    sys.exit(run_cli())
