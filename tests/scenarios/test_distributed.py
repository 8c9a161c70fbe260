"""Data-parallel training with torchrun on CPU (gloo, 2 processes): synchronized batch norm,
rank-0 logging and checkpoints, SIGTERM and resume."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import torch
from mlflow import MlflowClient

from medseg.models.directory import load_model_dir
from tests.conftest import ROOT, SAMPLE, fresh_store


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_sync_batch_norm_equals_batch_norm_over_the_global_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 6, 7) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1, 1) + 2
    x[2:] += 1.5  # the two ranks' halves have different statistics
    grad_out = torch.randn_like(x)
    torch.save({"x": x, "grad_out": grad_out}, tmp_path / "in.pt")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(_port()), str(ROOT / "tests" / "scenarios" / "sync_bn_worker.py"), str(tmp_path / "in.pt"),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    results = [torch.load(tmp_path / f"out.rank{r}.pt") for r in range(2)]
    ref = torch.nn.BatchNorm3d(3)
    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    yr.backward(grad_out)
    assert all(r["type"] == "CPUSyncBatchNorm" for r in results)
    assert torch.allclose(torch.cat([r["y"] for r in results]), yr.detach(), atol=1e-5)
    # input gradients flow through the global statistics (a per-rank BN would give different ones)
    assert torch.allclose(torch.cat([r["grad"] for r in results]), xr.grad, atol=1e-5)
    assert torch.allclose(results[0]["weight_grad"] + results[1]["weight_grad"], ref.weight.grad, atol=1e-4)
    for r in results:
        assert torch.allclose(r["running_mean"], ref.running_mean, atol=1e-6)
        assert torch.allclose(r["running_var"], ref.running_var, atol=1e-5)


def _torchrun(work, uri, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port()),
           "-m", "medseg", "train", "--quiet", "--tracking-uri", uri, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_torchrun_two_processes_sync_bn_sigterm_and_resume(tmp_path):
    uri = fresh_store(tmp_path / "store.db")
    proc = _torchrun(tmp_path, uri, "--config", str(ROOT / "configs/demo.yaml"), "--data", str(SAMPLE),
                     "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                     "--set", "model.norm=batch", "--set", "train.epochs=3", "--set", "train.iterations_per_epoch=3",
                     "--set", "validation.every_n_epochs=1", "--set", "validation.hd95=false", "--set", "tracking.log_model=false")
    t0 = time.time()
    while not list((tmp_path / "runs").glob("*/checkpoints/last.pt")):  # the end of epoch 1
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # as a cluster scheduler signals every task of a job
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode != 0 and "SIGTERM received" in out, out[-3000:]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medseg-demo").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["sync_bn"] == "True"
    done = len(client.get_metric_history(run.info.run_id, "train_loss"))
    assert 1 <= done < 3

    proc = _torchrun(tmp_path, uri, "--resume", str(run_dir))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("medseg-demo").experiment_id])  # one run, rank 0's
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == [0, 1, 2]  # each epoch logged once, by rank 0 only
    assert "best_val_dice_mean" in run.data.metrics
    loaded = load_model_dir(run_dir / "model")  # a plain BatchNorm3d network for inference
    assert any(type(m) is torch.nn.BatchNorm3d for m in loaded.network.modules())
