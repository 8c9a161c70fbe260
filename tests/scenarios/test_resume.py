"""Crash and resume: a training process SIGKILLed after a checkpoint resumes in the same MLflow run
and ends with the same metrics as an uninterrupted run (deterministic on CPU)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, SAMPLE, fresh_store

SETTINGS = ["--set", "train.epochs=2", "--set", "train.iterations_per_epoch=4", "--set", "validation.every_n_epochs=1",
            "--set", "validation.hd95=false", "--set", "train.checkpoint_every_iterations=2",
            "--set", "train.deterministic=true", "--set", "tracking.log_model=false"]  # the MLflow Model: test_mlflow_model.py


def _train(work, uri, *extra, wait=True):
    if "--resume" in extra:  # a resumed run takes everything from its own config.yaml
        cmd = [sys.executable, "-m", "medseg", "train", "--tracking-uri", uri, "--quiet", *extra]
    else:
        cmd = [sys.executable, "-m", "medseg", "train", "--config", str(ROOT / "configs/demo.yaml"), "--data",
               str(SAMPLE), "--tracking-uri", uri, "--quiet", "--set", f"output_dir={work / 'runs'}", *SETTINGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=600)
        return proc.returncode, out, err
    return proc


def _start_until_first_checkpoint(work, uri, timeout=300):
    """Start a training subprocess and return it once its first checkpoints/last.pt exists."""
    proc = _train(work, uri, wait=False)
    t0 = time.time()
    while not list((work / "runs").glob("*/checkpoints/last.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    (last,) = list((work / "runs").glob("*/checkpoints/last.pt"))
    return proc, last


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    uri = fresh_store(work / "store.db")
    rc, out, err = _train(work, uri)
    assert rc == 0, err
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run.info.run_id


@pytest.mark.parametrize("kill_at", ["second epoch"])  # a stop mid-epoch: test_sigterm_saves_and_says_how_to_resume
def test_sigkill_then_resume_matches_uninterrupted_run(kill_at, reference, tmp_path):
    ref_client, ref_id = reference
    uri = fresh_store(tmp_path / "store.db")
    proc, last = _start_until_first_checkpoint(tmp_path, uri)
    if kill_at == "second epoch":
        from medseg.checkpoint import load_checkpoint
        while True:
            try:
                if load_checkpoint(last)["next_epoch"] >= 1:
                    break
            except Exception:  # being replaced right now: the rename is atomic, try again
                pass
            time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = last.parents[1]
    rc, out, err = _train(tmp_path, uri, "--resume", str(run_dir))
    assert rc == 0, err
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_dice_mean", "learning_rate"):
        hist = _history(client, run.info.run_id, key)
        assert [s for s, _ in hist] == [0, 1], (key, hist)  # continuous, nothing logged twice
        assert hist == _history(ref_client, ref_id, key), key  # deterministic: same as uninterrupted


def test_sigterm_saves_and_says_how_to_resume(reference, tmp_path):
    """SIGTERM mid-epoch (after the first checkpoint, at iteration 2 or later of epoch 1): a checkpoint
    of the iteration reached, exit 130, and a resume by MLflow run id that ends as the uninterrupted run."""
    ref_client, ref_id = reference
    uri = fresh_store(tmp_path / "store.db")
    proc, _ = _start_until_first_checkpoint(tmp_path, uri)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM received" in err and "medseg train --resume" in err
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"
    # resume by MLflow run id
    rc, out, err = _train(tmp_path, uri, "--resume", run.info.run_id)
    assert rc == 0, err
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    for key in ("train_loss", "val_dice_mean", "learning_rate"):
        hist = _history(client, run.info.run_id, key)
        assert [s for s, _ in hist] == [0, 1], (key, hist)  # continuous, nothing logged twice
        assert hist == _history(ref_client, ref_id, key), key  # deterministic: same as uninterrupted
