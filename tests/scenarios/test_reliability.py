"""Failures a user meets in practice: unreachable tracking server, GPU out of memory, full disk."""
import errno
import shutil

import nibabel as nib
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import MedsegError
from tests.conftest import ROOT, SAMPLE, tree


def test_unreachable_tracking_server_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", "--config", str(ROOT / "configs/demo.yaml"), "--data", str(SAMPLE),
                                 "--tracking-uri", "http://127.0.0.1:9", "--quiet"])
    assert r.exit_code != 0
    assert "http://127.0.0.1:9" in str(r.exception) and "--offline" in str(r.exception)
    assert tree(tmp_path) <= {p for p in tree(tmp_path) if p.startswith(".medseg_cache")}  # no run, no store


def test_offline_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    r = CliRunner().invoke(app, ["train", "--config", str(ROOT / "configs/demo.yaml"), "--data", str(SAMPLE),
                                 "--offline", "--quiet", "--set", "train.epochs=1", "--set",
                                 "train.iterations_per_epoch=1", "--set", "validation.hd95=false"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (tmp_path / "mlflow.db").exists()


def test_out_of_memory_saves_a_checkpoint_and_suggests_a_fix(tmp_path, monkeypatch):
    from medseg.config import load_config
    from medseg.training import run as run_mod

    calls = {"n": 0}
    real = run_mod.train_epoch

    def oom_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "train_epoch", oom_in_second_epoch)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs/demo.yaml", [f"data.root={SAMPLE}", "train.epochs=2",
                                                   "train.iterations_per_epoch=1", "validation.hd95=false"])
    with pytest.raises(MedsegError) as e:
        run_mod.run_training(cfg)
    msg = str(e.value)
    assert "out of cpu memory" in msg and "train.batch_size" in msg and "--resume" in msg
    (last,) = list((tmp_path / "runs" / "demo").glob("*/checkpoints/last.pt"))
    assert str(last) in msg


def test_full_disk_while_writing_outputs_leaves_no_partial_file(trained, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))[0], inp / "case.nii.gz")
    real_save = nib.save

    def full_disk(img, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full_disk)
    r = CliRunner().invoke(app, ["predict", "-m", str(trained["run_dir"] / "model"), "-i", str(inp),
                                 "-o", str(tmp_path / "out"), "--quiet"])
    monkeypatch.setattr(nib, "save", real_save)
    assert r.exit_code == 1
    assert list((tmp_path / "out").iterdir()) == []  # neither a half-written segmentation nor a temporary file
