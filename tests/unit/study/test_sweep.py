"""medseg.study.sweep: budget and learning-rate rules, sweep definitions, the per-child environment of
``--jobs`` and the children's priority (whole sweeps: tests/scenarios/test_sweep.py)."""
from __future__ import annotations

import pytest

from medseg.errors import ConfigError
from medseg.study.sweep import SweepSpec, child_environment, child_iterations, scaled_lr


def test_child_environment_splits_threads_or_gpus():
    import os
    assert child_environment(0, 1, cpus=2, gpus=0) == dict(os.environ)  # one job: nothing changes
    env = child_environment(1, 2, cpus=2, gpus=0)
    assert env["OMP_NUM_THREADS"] == "1" and env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert child_environment(1, 2, cpus=16, gpus=2)["CUDA_VISIBLE_DEVICES"] == "1"
    assert child_environment(2, 3, cpus=16, gpus=2)["CUDA_VISIBLE_DEVICES"] == "0"
    assert child_environment(0, 4, cpus=2, gpus=0)["OMP_NUM_THREADS"] == "1"


def test_budget_and_learning_rate_rules():
    spec = SweepSpec(("instance",), (1, 3), (0,), "samples", 10)
    assert [child_iterations(spec, b) for b in (1, 3)] == [10, 4]
    assert child_iterations(SweepSpec(("instance",), (1,), (0,), "iterations", 7), 4) == 7
    minutes = SweepSpec(("instance",), (1,), (0,), "minutes", 2)
    assert child_iterations(minutes, 2, seconds_per_iteration=0.5) == 240
    with pytest.raises(ValueError):
        child_iterations(minutes, 2)
    assert scaled_lr(0.01, 2, 4, "linear") == 0.02 and scaled_lr(0.01, 2, 8, "sqrt") == 0.02
    assert scaled_lr(0.01, 2, 4, "none") == 0.01


@pytest.mark.parametrize("kwargs, word", [
    (dict(norms=("instance", "bogus")), "--norms"), (dict(batch_sizes=(0,)), "--batch-sizes"),
    (dict(lr_rule="cubic"), "--lr-rule"), (dict(budget_value=0), "--budget"), (dict(seeds=()), "--seeds")])
def test_bad_sweep_definitions_are_errors(kwargs, word):
    base = dict(norms=("instance",), batch_sizes=(1,), seeds=(0,), budget="samples", budget_value=4)
    with pytest.raises(ConfigError) as e:
        SweepSpec(**{**base, **kwargs})
    assert word in str(e.value)


def test_a_niced_sweep_keeps_its_children_niced():
    """On Linux's autogroup scheduler a child in its own session starts a group at nice 0; the
    sweep gives it its own niceness, so `nice -n 19 medseg sweep` stays in the background."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel schedules without autogroups: plain nice already applies to children")
    expected = min(os.nice(0) + 7, 19)  # the test itself may run niced (nice -n 5 make test)
    script = ("import os, subprocess; os.nice(7); from medseg.study.sweep import keep_priority; "
              "p = subprocess.Popen(['sleep', '30'], start_new_session=True); keep_priority(p.pid); "
              "print(open(f'/proc/{p.pid}/autogroup').read().strip()); p.kill()")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(f"nice {expected}"), out.stdout


@pytest.mark.parametrize("kwargs,word", [({"executor": "kubernetes"}, "--executor"), ({"jobs": 0}, "--jobs"),
                                         ({"timeout_min": 0}, "--timeout-min")])
def test_a_bad_execution_is_refused_by_name(kwargs, word):
    from medseg.errors import ConfigError
    from medseg.study.sweep import Execution

    with pytest.raises(ConfigError) as e:
        Execution(**kwargs)
    assert e.value.path == word


@pytest.mark.parametrize("override", [["model.filters=auto", "model.strides=auto"], ["train.batch_size=auto"]])
def test_a_sweep_refuses_auto_before_any_run(override, tmp_path):
    from medseg.config import load_config
    from medseg.study.sweep import run_sweep
    from tests.conftest import ROOT, SAMPLE
    cfg = load_config(ROOT / "configs/demo.yaml", [f"data.root={SAMPLE}", f"output_dir={tmp_path}", *override])
    with pytest.raises(ConfigError, match="medseg plan"):
        run_sweep(cfg, SweepSpec(norms=("instance",), batch_sizes=(1,), seeds=(0,), budget="samples", budget_value=6))
    assert not list(tmp_path.iterdir())  # nothing written, no MLflow run
