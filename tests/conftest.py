"""Shared fixtures: the embedded sample, ../shared data when present, and small MSD datasets in tmp."""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "Task04_Hippocampus"
SHARED = ROOT.parent / "shared" / "data"


def copy_msd(src: Path, dest: Path, n: int | None = None) -> Path:
    """Copy an MSD task folder (optionally only its first n cases) to dest."""
    doc = json.loads((src / "dataset.json").read_text())
    cases = doc["training"][:n] if n else doc["training"]
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for c in cases:
        for k in ("image", "label"):
            shutil.copyfile(src / c[k], dest / c[k])
    doc["training"] = cases
    doc["numTraining"] = len(cases)
    (dest / "dataset.json").write_text(json.dumps(doc, indent=1))
    return dest


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of 6 cases of the embedded sample."""
    return copy_msd(SAMPLE, tmp_path / "Task04_copy", n=6)


@pytest.fixture(scope="module")
def hippo_plan():
    """The plan derived from the embedded sample's fingerprint (unit/test_transforms.py, unit/data/test_fingerprint.py)."""
    from medseg.data import compute_fingerprint, read_dataset
    from medseg.plan import make_plan

    return make_plan(compute_fingerprint(read_dataset(SAMPLE)), strides=[1, 2, 2, 2])


def tree(path: Path) -> set[str]:
    """All files under path, relative (to check that a failing command wrote nothing)."""
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


_STORE_TEMPLATE: list[Path] = []


def fresh_store(path: Path) -> str:
    """The URI of an MLflow SQLite store at ``path``: an empty store with MLflow's schema, copied from
    one template made once per test session. A new store runs MLflow's ~40 alembic migrations (4-6 s
    on 2 cores), which 10 of the tests would otherwise each pay. An existing file is kept."""
    if not _STORE_TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="medseg-test-store-"))
        atexit.register(shutil.rmtree, folder, True)
        template = folder / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()  # creates the tables
        _STORE_TEMPLATE.append(template)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_STORE_TEMPLATE[0], path)
    return f"sqlite:///{path}"


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is not present (a developer/CI dataset)")
    return path


EPOCHS = 2
REGISTERED = "test-hippocampus"  # the trained model's name in the Model Registry


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny real training on the embedded sample (fold 1), shared by the tests that need a model."""
    from medseg.cli import app

    work = tmp_path_factory.mktemp("train")
    uri = fresh_store(work / "store.db")
    result = CliRunner().invoke(app, [
        "train", "--config", str(ROOT / "configs/demo.yaml"), "--data", str(SAMPLE), "--fold", "1",
        "--tracking-uri", uri, "--experiment", "test-exp", "--quiet",
        "--set", f"output_dir={work / 'runs'}", "--set", f"data.cache_dir={work / 'cache'}",
        "--set", f"train.epochs={EPOCHS}", "--set", "train.iterations_per_epoch=3",
        "--set", "validation.every_n_epochs=1", "--set", "tracking.system_metrics_interval=0.5",
        "--register", REGISTERED, "--alias", "champion"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((work / "runs").iterdir())
    client = MlflowClient(tracking_uri=uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "test-exp"]
    (run,) = client.search_runs([exp.experiment_id])
    return {"work": work, "run_dir": run_dir, "client": client, "run": run, "output": result.output}


