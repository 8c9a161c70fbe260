"""Each bad input of the training issue: a clear error naming the file, exit code 2, nothing written."""
import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.data import compute_fingerprint, read_dataset
from medseg.errors import DataError
from tests.conftest import ROOT, SAMPLE, tree


def _first(ds, kind):
    doc = json.loads((ds / "dataset.json").read_text())
    return ds / doc["training"][0][kind]


def _rewrite(path, fn):
    img = nib.load(path)
    data, affine = fn(np.asarray(img.dataobj).astype(np.float32), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def _missing_image(ds):
    p = _first(ds, "image"); p.unlink(); return p


def _shape_mismatch(ds):
    p = _first(ds, "label"); _rewrite(p, lambda d, a: (d[:-2], a)); return p


def _affine_mismatch(ds):
    p = _first(ds, "label")
    def shift(d, a):
        a[:3, 3] += 1.5
        return d, a
    _rewrite(p, shift); return p


def _truncated(ds):
    p = _first(ds, "image"); raw = p.read_bytes(); p.write_bytes(raw[: len(raw) // 2]); return p


def _corrupt(ds):
    p = _first(ds, "image"); raw = bytearray(gzip.decompress(p.read_bytes()))
    p.write_bytes(gzip.compress(bytes(raw[:400])) + b"\x00garbage"); return p


def _not_nifti(ds):
    p = _first(ds, "image"); p.write_bytes(b"this is a text file, not an image\n" * 50); return p


def _undeclared_label(ds):
    p = _first(ds, "label")
    def add(d, a):
        d[0, 0, 0] = 7
        return d, a
    _rewrite(p, add); return p


def _nan_voxels(ds):
    p = _first(ds, "image")
    def nan(d, a):
        d[1, 2, 3] = np.nan
        return d, a
    _rewrite(p, nan); return p


def _empty_dataset(ds):
    doc = json.loads((ds / "dataset.json").read_text()); doc["training"] = []
    (ds / "dataset.json").write_text(json.dumps(doc)); return ds / "dataset.json"


def _not_json(ds):
    (ds / "dataset.json").write_text("{not json"); return ds / "dataset.json"


def _no_labels_key(ds):
    doc = json.loads((ds / "dataset.json").read_text()); del doc["labels"]
    (ds / "dataset.json").write_text(json.dumps(doc)); return ds / "dataset.json"


CASES = {
    "missing image": (_missing_image, "missing"),
    "shape mismatch": (_shape_mismatch, "does not match image shape"),
    "affine mismatch": (_affine_mismatch, "affine differs"),
    "truncated gz": (_truncated, "corrupt or truncated"),
    "corrupt gz": (_corrupt, ""),
    "not nifti": (_not_nifti, "not a readable NIfTI"),
    "undeclared label": (_undeclared_label, "not declared in dataset.json"),
    "nan voxels": (_nan_voxels, "NaN/Inf"),
    "empty dataset": (_empty_dataset, "empty"),
    "dataset.json not json": (_not_json, "not valid JSON"),
    "dataset.json without labels": (_no_labels_key, "'labels'"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_dataset_is_refused_before_training(name, sample_copy, tmp_path, monkeypatch):
    make_bad, needle = CASES[name]
    bad_file = make_bad(sample_copy)
    with pytest.raises(DataError) as e:
        compute_fingerprint(read_dataset(sample_copy))
    assert str(bad_file) in str(e.value)
    assert needle in str(e.value)

    # through the CLI: exit code 2, the file named, no traceback, nothing written
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree(sample_copy)
    result = CliRunner().invoke(app, ["train", "--config", str(ROOT / "configs/demo.yaml"), "--data", str(sample_copy),
                                      "--quiet"], standalone_mode=True)
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError)
    assert tree(work) == set(), "a refused run must write nothing (no mlflow.db, runs/, cache)"
    assert tree(sample_copy) == before


def test_cli_error_message_has_no_traceback(sample_copy, tmp_path):
    import subprocess, sys
    _not_nifti(sample_copy)
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "medseg", "train", "--config", str(ROOT / "configs/demo.yaml"),
                        "--data", str(sample_copy), "--quiet"], capture_output=True, text=True, cwd=work)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "error:" in r.stderr and "hippocampus_" in r.stderr and "not a readable NIfTI" in r.stderr
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("override, needle", [
    ("sampling.patch_size=[36,56,40]", "cannot be taken by a network"),
    ("model.norm=groupnorm", "model.norm"),
    ("model.filters=[12,24,48,96]", "divisible by 8"),  # group norm with 8 groups vs 12 channels
])
def test_bad_model_settings_are_refused_before_training(override, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--set", "model.norm=group"] if "filters" in override else []
    result = CliRunner().invoke(app, ["train", "--config", str(ROOT / "configs/demo.yaml"), "--set", override,
                                      "--data", str(SAMPLE), *extra, "--quiet"])
    assert result.exit_code != 0
    assert needle in str(result.exception)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
