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


GIB = 1 << 30


def test_children_are_placed_on_gpus_by_memory():
    """A faked inventory: 8 children of 2 GiB on one 139 GiB GPU all go to GPU 0; on two GPUs 4 each;
    a child too large for what is left waits, and one too large for any GPU is refused."""
    from medseg.study.gpus import Gpu, GpuPlacer, child_need_bytes
    need = child_need_bytes(2 * GIB)
    one = GpuPlacer([Gpu(0, 139 * GIB)])
    assert [one.place(need) for _ in range(8)] == [0] * 8
    two = GpuPlacer([Gpu(0, 139 * GIB), Gpu(1, 139 * GIB)])
    placed = [two.place(need) for _ in range(8)]
    assert placed.count(0) == placed.count(1) == 4
    small = GpuPlacer([Gpu(0, 10 * GIB)])
    big = child_need_bytes(5 * GIB)  # 7.5 GiB with the CUDA context and the safety factor
    assert small.place(big) == 0 and small.place(big) is None  # the second waits
    small.release(0, big)
    assert small.place(big) == 0  # ... until the first ends
    assert not small.fits_ever(child_need_bytes(20 * GIB))


def test_run_local_gives_each_child_its_placed_gpu_and_makes_the_others_wait(tmp_path):
    """Three children on one faked GPU with room for two: two start, the third waits for one of them;
    each child sees the GPU it was placed on (CUDA_VISIBLE_DEVICES). A child that fits no GPU is
    refused before any starts."""
    import sys

    from medseg.errors import MedsegError
    from medseg.study.gpus import Gpu, child_need_bytes
    from medseg.study.sweep import Task, run_local
    code = ("import os, sys, time; open(sys.argv[1], 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '-') + ' ' + "
            "repr(time.time())); time.sleep(0.6); open(sys.argv[1], 'a').write(' ' + repr(time.time()))")
    tasks = [Task(f"c{i}", [sys.executable, "-c", code, str(tmp_path / f"c{i}")], f"c{i}", 2 * GIB) for i in range(3)]
    gpus = [Gpu(3, 2 * child_need_bytes(2 * GIB))]  # room for two
    codes, interrupted = run_local(tasks, jobs=3, log=lambda s: None, gpus=gpus)
    assert codes == {"c0": 0, "c1": 0, "c2": 0} and interrupted is None
    spans = {k: (tmp_path / k).read_text().split() for k in codes}
    assert {v[0] for v in spans.values()} == {"3"}
    first_end = min(float(spans["c0"][2]), float(spans["c1"][2]))
    assert float(spans["c2"][1]) >= first_end - 0.05  # the third started when one of the first two had ended
    with pytest.raises(MedsegError, match="c9 needs about"):
        run_local([Task("c9", [sys.executable, "-c", "0"], "c9", 100 * GIB)], jobs=2, log=lambda s: None, gpus=gpus)
