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
    config: Path = typer.Option(..., "--config", "-c", help="YAML config (see configs/)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="MSD-layout dataset folder (overrides data.root)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Validation fold (overrides data.fold)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeatable)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment name."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI "
                                               "(default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
):
    """Train a 3D U-Net on an MSD dataset and validate it on one fold; log everything to MLflow."""
    from medseg.config import load_config
    from medseg.training.run import run_training

    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.root={data}")
    if fold is not None:
        overrides.append(f"data.fold={fold}")
    if experiment:
        overrides.append(f"tracking.experiment={experiment}")
    if tracking_uri:
        overrides.append(f"tracking.tracking_uri={tracking_uri}")
    cfg = load_config(config, overrides)
    result = run_training(cfg, progress=silent if quiet else rich_progress,
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
    from medseg.inference.evaluate import evaluate_cases, write_csv
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


def main() -> None:
    """Entry point: user errors are printed without a traceback (``--debug`` shows it) and exit 2."""
    try:
        app(standalone_mode=False)
    except MedsegError as e:
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
