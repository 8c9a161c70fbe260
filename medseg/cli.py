"""The ``medseg`` command line (typer + rich). Thin: parse, validate the config, call the core."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from medseg import __version__
from medseg.errors import MedsegError
from medseg.progress import rich_progress, silent

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="3D U-Net segmentation of CT/MRI volumes with a choice of normalization, tracked in MLflow.")
console = Console(stderr=True)
out = Console()
_state = {"debug": False}


def _version(value: bool):
    if value:
        out.print(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True)):
    _state["debug"] = debug


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/); "
                                          "with --resume, the run's own config.yaml is used."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="MSD-layout dataset folder (overrides data.root)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue a run from its last checkpoint, in the "
                                         "same MLflow run: a run folder or an MLflow run id."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Validation fold (overrides data.fold)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeatable)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment name."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI "
                                               "(default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic algorithms: identical results "
                                       "for the same config and seed on CPU (sets train.deterministic)."),
    offline: bool = typer.Option(False, "--offline", help="Log to the local store sqlite:///mlflow.db whatever "
                                 "the config or MLFLOW_TRACKING_URI say."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
):
    """Train a 3D U-Net on an MSD dataset and validate it on one fold; log everything to MLflow."""
    from medseg.config import load_config
    from medseg.training.run import find_run_dir, run_training

    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.root={data}")
    if fold is not None:
        overrides.append(f"data.fold={fold}")
    if experiment:
        overrides.append(f"tracking.experiment={experiment}")
    if deterministic:
        overrides.append("train.deterministic=true")
    if offline:
        tracking_uri = f"sqlite:///{Path('mlflow.db').resolve()}"
    if tracking_uri:
        overrides.append(f"tracking.tracking_uri={tracking_uri}")
    resume_dir = None
    if resume:
        resume_dir = find_run_dir(resume, tracking_uri)
        config = resume_dir / "config.yaml"
    elif config is None:
        raise MedsegError("--config is required (or --resume RUN_DIR)", "medseg train")
    cfg = load_config(config, overrides)
    result = run_training(cfg, resume_dir=resume_dir, progress=silent if quiet else rich_progress,
                          log=(lambda s: None) if quiet else console.print)
    table = Table(title=f"Validation, fold {cfg.data.fold} (best epoch {result.best_epoch + 1})")
    table.add_column("label"), table.add_column("Dice"), table.add_column("HD95 (mm)")
    for name, d in result.val_dice.items():
        table.add_row(name, _fmt(d), _fmt(result.val_hd95[name]))
    table.add_row("mean", _fmt(sum(result.val_dice.values()) / len(result.val_dice)), "")
    out.print(table)
    out.print(f"model: {result.model_dir}\nMLflow run: {result.run_id}")


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
    from medseg.data import read_dataset
    from medseg.atomic import write_csv
    from medseg.inference.evaluate import evaluate_cases
    from medseg.inference.predictor import Predictor
    from medseg.models.directory import load_model_dir

    loaded = load_model_dir(model, device=device)
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
    cache_dir: Path = typer.Option(Path(".medseg_cache"), "--cache-dir"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Check every image/label pair and print the dataset fingerprint (cached)."""
    from medseg.data import load_or_compute_fingerprint, read_dataset

    spec = read_dataset(data)
    fp, path = load_or_compute_fingerprint(spec, cache_dir, silent if quiet else rich_progress)
    summary = {k: v for k, v in fp.items() if k != "cases"}
    out.print_json(json.dumps(summary))
    if not quiet:
        console.print(f"cached at {path}")


@app.command()
def predict(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory (written by medseg train)."),
    input: Path = typer.Option(..., "--input", "-i", help="NIfTI file, folder of NIfTI files, DICOM series folder, "
                                                          "or folder of DICOM series folders."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (not inside the input folder)."),
    overlap: float = typer.Option(0.5, "--overlap", min=0.0, max=0.95, help="Sliding-window overlap."),
    sw_batch_size: int = typer.Option(4, "--sw-batch-size", min=1, help="Windows per forward pass."),
    tta: bool = typer.Option(False, "--tta", help="Mirroring test-time augmentation (8 flips, averaged softmax)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (AMP bf16 on cuda)."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write <case>_probabilities.npz (float16)."),
    largest_component: bool = typer.Option(False, "--largest-component", help="Keep the largest connected component per label."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="Series to use in DICOM folders with several."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (default: skip them)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Segment volumes; outputs have exactly the input's shape and affine, plus volumes.csv (ml)."""
    from medseg.inference.batch import check_output_dir, collect_inputs, predict_inputs
    from medseg.inference.segmenter import Segmenter

    inputs = collect_inputs(input)
    check_output_dir(output, input)
    try:
        segmenter = Segmenter.load(model, device=device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta,
                                   largest_component=largest_component)
    except ValueError as e:
        raise MedsegError(str(e), "--device") from None
    summary = predict_inputs(segmenter, inputs, output, overwrite=overwrite, save_probabilities=save_probabilities,
                             series_uid=series_uid, progress=silent if quiet else rich_progress)
    table = Table(title=f"medseg predict -> {output}")
    for col in ("cases", "done", "skipped (exist)", "failed", "seconds", "s/case"):
        table.add_column(col)
    per = summary.seconds / max(1, len(summary.done))
    table.add_row(str(len(inputs)), str(len(summary.done)), str(len(summary.skipped)), str(len(summary.failed)),
                  f"{summary.seconds:.1f}", f"{per:.2f}")
    out.print(table)
    for name, msg in summary.failed.items():
        console.print(f"[bold red]failed:[/] {name}: {msg}")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def convert(
    input: Path = typer.Option(..., "--input", "-i", help="DICOM series folder."),
    output: Path = typer.Option(..., "--output", "-o", help="NIfTI file to write (.nii.gz)."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="Series to convert when the folder holds several."),
):
    """Convert a DICOM series to NIfTI (SimpleITK ImageSeriesReader); lists the series found."""
    from medseg.data.dicom import dicom_to_nifti, find_series

    if not output.name.endswith((".nii.gz", ".nii")):
        raise MedsegError("output must end in .nii.gz or .nii", output)
    for s in find_series(input) if input.is_dir() else []:
        console.print(f"series {s}")
    path = dicom_to_nifti(input, output, series_uid)
    out.print(f"wrote {path}")


def main() -> None:
    """Entry point: user errors are printed without a traceback (``--debug`` shows it) and exit 2."""
    try:
        app(standalone_mode=False)
    except MedsegError as e:
        from medseg.training.run import TrainingInterrupted
        if isinstance(e, TrainingInterrupted):
            console.print(f"[bold yellow]interrupted:[/] {e}")
            sys.exit(130)
        if _state["debug"]:
            console.print_exception()
        console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
