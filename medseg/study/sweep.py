"""The normalizer x batch-size study: one training run per (norm, batch size, seed), each a child
MLflow run under one parent run, with an explicit, logged budget rule.

Budget rules (every child of a sweep has the same fold, patch size, augmentation and network):

* ``samples`` (default): every child sees the same number N of training patches, so a child with
  batch size b trains ``ceil(N / b)`` iterations.
* ``iterations``: every child trains the same number of iterations (larger batches see more patches).
* ``minutes``: every child gets about the same wall-clock time; its iteration count is the budget
  divided by the seconds per iteration of its (norm, batch size), measured on random patches
  before the child starts (data loading and validation are not in that estimate).

Learning rate for batch size b, given the config's ``train.lr`` at its ``train.batch_size`` b0:
``sqrt`` (default): lr * sqrt(b / b0) (Krizhevsky 2014, "One weird trick"; Hoffer et al. 2017);
``linear``: lr * b / b0 (Goyal et al. 2017); ``none``: lr unchanged.

Each child is a ``medseg train`` subprocess (its own process, so its peak memory is its own and a
crash cannot take the sweep down). A sweep is identified by a hash of its definition; running the
same command again skips the children that finished, resumes an unfinished one from its last
checkpoint, and starts afresh one that left no checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medseg.atomic import atomic_write_text
from medseg.config import AUTO, Config, config_to_yaml, flatten
from medseg.errors import ConfigError, Interrupted, MedsegError
from medseg.keys import (
    FAILED_CHILDREN_TAG,
    RUN_DIR_TAG,
    SUPERSEDED_TAG,
    SWEEP_ID_TAG,
    SWEEP_KEY_TAG,
    SWEEP_ROLE_TAG,
    check_sweep_id,
)
from medseg.signals import stop_on_signals
from medseg.study.gpus import Gpu, GpuPlacer, child_need_bytes, gpu_inventory
from medseg.study.rules import EVALUATIONS, EXECUTORS, JOBS, LR_RULE, SLURM_TIMEOUT_MIN
from medseg.tracking import Tracker, resolve_tracking_uri

BudgetKind = Literal["samples", "iterations", "minutes"]
LR_RULE_FACTORS = {"sqrt": "sqrt(b / b0)", "linear": "b / b0", "none": "1"}
LR_RULES = tuple(LR_RULE_FACTORS)
Log = Callable[[str], None]


class SweepInterrupted(Interrupted):
    """The sweep was interrupted; running the same command again continues it."""


@dataclass(frozen=True)
class Child:
    """One cell of the sweep."""

    norm: str
    batch_size: int
    seed: int

    @property
    def key(self) -> str:
        """``instance_bs2_seed0``: the child's MLflow run name and ``medseg.sweep_key`` tag."""
        return f"{self.norm}_bs{self.batch_size}_seed{self.seed}"


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep varies and how it budgets.

    Attributes:
        norms: e.g. ``("instance", "group", "batch")``.
        batch_sizes: e.g. ``(1, 2, 4)``.
        seeds: e.g. ``(0, 1)``.
        budget: ``samples`` | ``iterations`` | ``minutes``.
        budget_value: patches, iterations, or minutes per child.
        lr_rule: see :data:`LR_RULES`.
        evaluations: validation points per child (the learning curve's resolution).
    """

    norms: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    budget: BudgetKind
    budget_value: float
    lr_rule: str = LR_RULE
    evaluations: int = EVALUATIONS

    def __post_init__(self):
        from medseg.norm_registry import NORMS
        bad = [n for n in self.norms if n not in NORMS]
        if bad or not self.norms:
            raise ConfigError(f"unknown norm(s) {bad}; choose from {', '.join(NORMS)}", "--norms")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError("batch sizes must be integers >= 1", "--batch-sizes")
        if not self.seeds:
            raise ConfigError("at least one seed is needed", "--seeds")
        for name, values in (("--norms", self.norms), ("--batch-sizes", self.batch_sizes), ("--seeds", self.seeds)):
            twice = sorted({v for v in values if list(values).count(v) > 1})
            if twice:
                raise ConfigError(f"{', '.join(map(str, twice))} given more than once: each child must be one cell", name)
        if self.budget not in ("samples", "iterations", "minutes") or not self.budget_value > 0:
            raise ConfigError(f"the budget must be a positive number of samples, iterations or minutes "
                              f"(got {self.budget}={self.budget_value})", "--budget-*")
        if self.lr_rule not in LR_RULES:
            raise ConfigError(f"unknown learning-rate rule {self.lr_rule!r}; choose from {', '.join(LR_RULES)}",
                              "--lr-rule")
        if self.evaluations < 1:
            raise ConfigError("--evaluations must be >= 1", "--evaluations")

    def children(self) -> list[Child]:
        """All cells, seed outermost, then batch size, then norm: a sweep stopped part-way has whole
        paired sets of (norm, batch size) for its first seeds."""
        return [Child(n, b, s) for s in self.seeds for b in self.batch_sizes for n in self.norms]

    def to_dict(self) -> dict:
        return {"norms": list(self.norms), "batch_sizes": list(self.batch_sizes), "seeds": list(self.seeds),
                "budget": self.budget, "budget_value": self.budget_value, "lr_rule": self.lr_rule,
                "evaluations": self.evaluations}


def scaled_lr(lr: float, base_batch_size: int, batch_size: int, rule: str) -> float:
    """The learning rate for ``batch_size`` under ``rule`` given ``lr`` at ``base_batch_size``."""
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / base_batch_size)
    if rule == "linear":
        return lr * batch_size / base_batch_size
    return lr


def child_iterations(spec: SweepSpec, batch_size: int, seconds_per_iteration: float | None = None) -> int:
    """Training iterations of a child with ``batch_size`` under the sweep's budget rule.

    Raises:
        ValueError: a minutes budget without a measured ``seconds_per_iteration``.
    """
    if spec.budget == "samples":
        return max(1, math.ceil(spec.budget_value / batch_size))
    if spec.budget == "iterations":
        return max(1, int(spec.budget_value))
    if seconds_per_iteration is None:
        raise ValueError("a minutes budget needs the measured seconds per iteration")
    return max(1, int(spec.budget_value * 60 / seconds_per_iteration))


def child_config(base: Config, child: Child, *, iterations: int, spec: SweepSpec, sweep_id: str,
                 parent_run_id: str, output_dir: Path) -> Config:
    """The base config with the child's norm, batch size, seed, learning rate and iteration count.

    The iterations are split into ``spec.evaluations`` epochs (validated after each), rounded up to
    whole epochs; per-epoch validation also measures batch norm with batch statistics.
    """
    doc = base.model_dump(mode="json")
    epochs = min(spec.evaluations, iterations)
    doc["seed"] = child.seed
    doc["output_dir"] = str(output_dir)
    doc["model"]["norm"] = child.norm
    doc["train"].update(batch_size=child.batch_size, epochs=epochs, iterations_per_epoch=math.ceil(iterations / epochs),
                        lr=scaled_lr(base.train.lr, base.train.batch_size, child.batch_size, spec.lr_rule),
                        warmup_epochs=0)
    doc["validation"].update(every_n_epochs=1, batch_stats=True, tta=False)
    doc["tracking"].update(run_name=child.key, parent_run_id=parent_run_id, tags={
        SWEEP_ID_TAG: sweep_id, SWEEP_ROLE_TAG: "child", SWEEP_KEY_TAG: child.key,
        "sweep.budget": spec.budget, "sweep.lr_rule": spec.lr_rule})
    return Config.model_validate(doc)


def sweep_id_for(base: Config, spec: SweepSpec) -> str:
    """A short hash of the sweep's definition: the same command gives the same id (and continues)."""
    doc = base.model_dump(mode="json")
    doc["data"]["root"] = str(Path(doc["data"]["root"]).resolve()) if doc["data"]["root"] else None
    doc.pop("output_dir")
    text = json.dumps({"config": doc, "sweep": spec.to_dict()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _find_runs(tracker_client, experiment_id: str, sweep_id: str, role: str) -> list:
    runs = tracker_client.search_runs(
        [experiment_id], f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{SWEEP_ROLE_TAG}` = '{role}'",
        max_results=5000)
    return [r for r in runs if r.data.tags.get(SUPERSEDED_TAG) != "true"]


def _parent(base: Config, spec: SweepSpec, sweep_id: str, uri: str, log: Log) -> Tracker:
    client = Tracker.client_for(uri)
    exp = client.get_experiment_by_name(base.tracking.experiment)
    existing = _find_runs(client, exp.experiment_id, sweep_id, "parent") if exp else []
    if existing:
        log(f"continuing sweep {sweep_id} (MLflow parent run {existing[0].info.run_id})")
        return Tracker.attach(uri, existing[0].info.run_id)
    tracker = Tracker(uri, base.tracking.experiment, f"sweep_{sweep_id}",
                      {SWEEP_ID_TAG: sweep_id, SWEEP_ROLE_TAG: "parent"})
    params = {f"sweep.{k}": ",".join(map(str, v)) if isinstance(v, list) else v for k, v in spec.to_dict().items()}
    params["sweep.rule"] = {
        "samples": f"every run sees {spec.budget_value:g} training patches: iterations = ceil(samples / batch size)",
        "iterations": f"every run trains {spec.budget_value:g} iterations",
        "minutes": f"every run trains ~{spec.budget_value:g} min: iterations = minutes * 60 / measured s/it",
    }[spec.budget] + f"; lr = train.lr * {LR_RULE_FACTORS[spec.lr_rule]}"
    tracker.log_params({**params, **{f"base.{k}": v for k, v in flatten(base).items()}})
    log(f"sweep {sweep_id}: MLflow parent run {tracker.run_id} in experiment {base.tracking.experiment!r}")
    return tracker


def _measure_seconds_per_iteration(base: Config, child: Child, in_channels: int, num_classes: int,
                                   cache: dict) -> float:
    from medseg.models import NetworkSpec, build_unet
    from medseg.training.timing import StepVariant, time_training_step

    key = (child.norm, child.batch_size)
    if key not in cache:
        if base.sampling.patch_size is None:
            raise ConfigError("a minutes budget needs sampling.patch_size in the config", "sampling.patch_size")
        net = build_unet(NetworkSpec.from_config(base.model, in_channels, num_classes, norm=child.norm))
        variant = StepVariant(base.train.amp, base.train.channels_last, base.train.compile is True)  # auto: eager here
        cache[key] = time_training_step(net, base.sampling.patch_size, child.batch_size, steps=3, warmup=1,
                                        variant=variant)
    return cache[key]


@dataclass(frozen=True)
class Task:
    """One child's ``medseg train`` command line, with the line to log when it starts, and the
    estimated bytes of its training iteration (what places it on a GPU; 0 when unknown)."""

    key: str
    cmd: list[str]
    note: str
    memory_bytes: int = 0


def child_environment(slot: int, jobs: int, cpus: int | None = None, gpus: int | None = None,
                      gpu: int | None = None) -> dict[str, str]:
    """Environment of the child in ``slot`` (0 <= slot < jobs) when ``jobs`` children share this machine.

    The child sees one GPU (``CUDA_VISIBLE_DEVICES``): ``gpu`` when given (placed by memory,
    :class:`medseg.study.gpus.GpuPlacer`), else round robin over the ``gpus`` GPUs; the CPU threads are
    split evenly (``OMP_NUM_THREADS``, which torch reads at start-up; at least 1). One job changes
    nothing but the GPU.
    """
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if jobs <= 1:
        return env
    cpus = cpus if cpus is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                          else os.cpu_count() or 1)
    if gpu is None:
        if gpus is None:
            import torch
            gpus = torch.cuda.device_count()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, cpus // jobs))
    return env


def keep_priority(pid: int) -> None:
    """Give a child started in its own session the sweep's own niceness on Linux's autogroup
    scheduler: there a new session is a new scheduling group at nice 0, so ``nice -n 19 medseg
    sweep`` would otherwise leave its children competing at full priority with everything else.
    Does nothing elsewhere or when not permitted."""
    niceness = os.nice(0)
    if niceness > 0:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(niceness))
        except OSError:
            pass


def run_local(tasks: list[Task], jobs: int, log: Log, gpus: list[Gpu] | None = None) -> tuple[dict[str, int], str | None]:
    """Run the tasks as subprocesses, at most ``jobs`` at once, each in its own session.

    With ``gpus`` (:func:`medseg.study.gpus.gpu_inventory`), each child goes to a GPU by its
    memory estimate (:class:`medseg.study.gpus.GpuPlacer`): several children share a GPU while their
    estimates fit its free memory, and a child with no room waits for one to end.

    SIGINT/SIGTERM stop it: every running child gets SIGTERM (it saves a checkpoint and exits), no
    new child starts.

    Returns:
        (``{key: exit code}`` of the children that ended on their own, the signal's name or None).

    Raises:
        MedsegError: with ``gpus``, a child that would not fit on any of them even alone (before any
            child starts).
    """
    placer = GpuPlacer(list(gpus)) if gpus else None
    if placer:
        for task in tasks:
            need = child_need_bytes(task.memory_bytes)
            if not placer.fits_ever(need):
                raise MedsegError(f"child {task.key} needs about {need / 2**30:.1f} GiB of GPU memory and the GPU with "
                                  f"the most has {max(g.free_bytes for g in placer.gpus) / 2**30:.1f} GiB free: lower "
                                  "its patch size, batch size or filters", "--jobs")
    running: dict[int, tuple[Task, subprocess.Popen, float, int | None]] = {}  # slot -> (task, process, start, gpu)
    codes: dict[str, int] = {}

    def forward(_name: str) -> None:
        for _task, proc, _start, _gpu in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the child checkpoints and exits

    pending = list(tasks)
    interrupted = None
    with stop_on_signals(forward) as stop:
        while pending or running:
            while pending and len(running) < max(1, jobs) and not (stop or interrupted):
                gpu = placer.place(child_need_bytes(pending[0].memory_bytes)) if placer else None
                if placer and gpu is None:
                    break  # no GPU has room: wait for a running child to end
                slot = min(set(range(max(1, jobs))) - set(running))
                task = pending.pop(0)
                log(task.note + (f" (GPU {gpu})" if gpu is not None else ""))
                proc = subprocess.Popen(task.cmd, stdout=subprocess.DEVNULL, start_new_session=True,
                                        env=child_environment(slot, jobs, gpu=gpu))
                keep_priority(proc.pid)
                running[slot] = (task, proc, time.perf_counter(), gpu)
            if not running:
                break
            time.sleep(0.2)
            for slot, (task, proc, start, gpu) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[slot]
                if placer and gpu is not None:
                    placer.release(gpu, child_need_bytes(task.memory_bytes))
                if stop or code == 130:
                    interrupted = stop.signal or interrupted or "SIGINT"
                    continue
                codes[task.key] = code
                log(f"{task.key}: {'finished' if code == 0 else f'failed (exit {code})'} in "
                    f"{time.perf_counter() - start:.0f} s")
    return codes, stop.signal or interrupted


@dataclass(frozen=True)
class Execution:
    """Where a sweep's children run, and how many at once.

    Attributes:
        executor: ``local`` (subprocesses on this machine), ``slurm`` (a submitit job array; each
            child on its own node slot, one GPU when ``train.device`` is not cpu), or
            ``submitit-local`` (submitit's local executor: the SLURM code path on this machine).
        jobs: children run at once (see :func:`run_local`; on SLURM, the array's parallelism).
        slurm_partition: SLURM partition (``slurm`` only; None = the cluster's default).
        timeout_min: time limit per child on SLURM, in minutes.

    Raises:
        ConfigError: an unknown executor, or fewer than 1 job or minute.
    """

    executor: str = EXECUTORS[0]
    jobs: int = JOBS
    slurm_partition: str | None = None
    timeout_min: int = SLURM_TIMEOUT_MIN

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.executor!r}; choose from {', '.join(EXECUTORS)}",
                              "--executor")
        for value, option in ((self.jobs, "--jobs"), (self.timeout_min, "--timeout-min")):
            if value < 1:
                raise ConfigError(f"must be at least 1, got {value}", option)

    def run(self, tasks: list[Task], folder: Path, device: str, log: Log) -> tuple[dict[str, int], str | None]:
        """Run ``tasks`` (see :func:`run_local` and :func:`run_submitit`); ``folder`` holds submitit's
        job files, ``device`` is the children's ``train.device``. Returns (exit codes, interruption)."""
        if self.executor == "local":
            gpus = gpu_inventory() if device != "cpu" and self.jobs > 1 else None
            return run_local(tasks, self.jobs, log, gpus=gpus)
        local = self.executor == "submitit-local"
        return run_submitit(tasks, self.jobs, log, folder, cluster="local" if local else "slurm",
                            timeout_min=self.timeout_min, slurm_partition=self.slurm_partition,
                            gpus_per_child=0 if device == "cpu" or local else 1)


def run_command(cmd: list[str]) -> int:
    """Run one child's command line and return its exit code (what a submitit job executes)."""
    return subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode


def run_submitit(tasks: list[Task], jobs: int, log: Log, folder: Path, cluster: str | None,
                 timeout_min: int = SLURM_TIMEOUT_MIN, slurm_partition: str | None = None,
                 gpus_per_child: int = 0) -> tuple[dict[str, int], str | None]:
    """Run the tasks as one submitit job array: a SLURM job array (``cluster=None`` on a SLURM
    login node, or ``"slurm"``), or submitit's local executor (``"local"``: the same code path on
    this machine, for testing). At most ``jobs`` array tasks run at once on SLURM. Needs
    ``pip install medseg[slurm]``. The children's paths (configs, run folders, the MLflow store)
    must be on a filesystem every node sees.

    Ctrl-C cancels the array (SLURM sends SIGTERM, so running children save a checkpoint).

    Returns:
        (``{key: exit code}``, the interruption's name or None).

    Raises:
        MedsegError: submitit is not installed.
    """
    try:
        import submitit
    except ImportError:
        raise MedsegError("the slurm executor needs submitit: pip install 'medseg[slurm]'", "--executor") from None
    if not tasks:
        return {}, None
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"timeout_min": timeout_min, "slurm_array_parallelism": max(1, jobs), "name": "medseg-sweep"}
    if gpus_per_child:
        params["gpus_per_node"] = gpus_per_child
    if slurm_partition:
        params["slurm_partition"] = slurm_partition
    executor.update_parameters(**params)
    submitted = executor.map_array(run_command, [t.cmd for t in tasks])
    for task, job in zip(tasks, submitted):
        log(f"{task.note} (submitit job {job.job_id})")
    codes: dict[str, int] = {}
    try:
        for task, job in zip(tasks, submitted):
            try:
                codes[task.key] = int(job.result())
            except Exception as e:  # the job itself failed (node failure, timeout, cancelled)
                log(f"{task.key}: submitit job {job.job_id} failed: {type(e).__name__}: {str(e)[:300]}")
                codes[task.key] = 1
            log(f"{task.key}: {'finished' if codes[task.key] == 0 else f'failed (exit {codes[task.key]})'}")
    except KeyboardInterrupt:
        for job in submitted:
            job.cancel(check=False)
        return codes, "SIGINT"
    return codes, None


def run_sweep(base: Config, spec: SweepSpec, *, sweep_dir: Path | None = None, sweep_id: str | None = None,
              log: Log = lambda s: None, python: str = sys.executable,
              execution: Execution = Execution()) -> tuple[str, str, dict[str, str]]:
    """Run (or continue) a sweep: one ``medseg train`` subprocess per unfinished child.

    Args:
        base: validated config with ``data.root`` set; its fold, patch, augmentation and network apply
            to every child; ``train.lr`` is the learning rate at ``train.batch_size``.
        sweep_dir: where child configs and run folders go (default ``output_dir/sweeps/<sweep_id>``).
        sweep_id: default :func:`sweep_id_for`.
        execution: where the children run and how many at once (:class:`Execution`).

    Returns:
        (sweep id, parent run id, ``{child key: "finished" | "skipped" | "failed (exit N)"}``).

    Raises:
        ConfigError: no dataset, or a bad sweep definition.
        SweepInterrupted: SIGINT/SIGTERM; the running children checkpointed; rerun to continue.
        MedsegError: the tracking store cannot be reached.
    """
    if base.data.root is None:
        raise ConfigError("no dataset: set data.root in the config or pass --data DIR", "data.root")
    if sweep_id is not None:
        check_sweep_id(sweep_id)
    if base.model.planned or base.train.batch_size == AUTO:
        raise ConfigError("a sweep's children must share one network and know their batch size, so its base config "
                          "takes no `auto`: run `medseg plan --data DIR` and write the planned filters, strides, "
                          "kernel_size and batch_size into the config", "model / train.batch_size")
    from medseg.data import read_dataset
    dataset = read_dataset(base.data.root)  # bad data fails here, once, not in every child
    doc = base.model_dump(mode="json")
    doc["tracking"]["tracking_uri"] = resolve_tracking_uri(base.tracking.tracking_uri)
    base = Config.model_validate(doc)
    sweep_id = sweep_id or sweep_id_for(base, spec)
    sweep_dir = Path(sweep_dir or Path(base.output_dir) / "sweeps" / sweep_id).resolve()
    (sweep_dir / "configs").mkdir(parents=True, exist_ok=True)
    uri = base.tracking.tracking_uri
    parent = _parent(base, spec, sweep_id, uri, log)
    atomic_write_text(sweep_dir / "sweep.json", json.dumps({"sweep_id": sweep_id, "parent_run_id": parent.run_id,
                                                     "tracking_uri": uri, "experiment": base.tracking.experiment,
                                                     **spec.to_dict()}, indent=1))
    tasks, status = _tasks(base, spec, sweep_id, sweep_dir, parent, dataset, python, log)
    codes, interrupted = execution.run(tasks, sweep_dir / "submitit", base.train.device, log)
    for key, code in codes.items():
        status[key] = "finished" if code == 0 else f"failed (exit {code})"
    if interrupted:
        parent.end("KILLED")
        raise SweepInterrupted(f"{interrupted} received; the running children saved a checkpoint. Run the same "
                               f"command again to continue sweep {sweep_id}", sweep_dir)
    failed = [k for k, v in status.items() if v.startswith("failed")]
    parent.set_tags({FAILED_CHILDREN_TAG: ",".join(failed) or "none"})
    parent.end("FINISHED")
    return sweep_id, parent.run_id, status


def _iteration_bytes(base: Config, batch_size: int, in_channels: int, out_channels: int) -> int:
    """A child's estimated training-iteration memory (its GPU placement): the base network at the
    child's batch size, on the config's patch, or the largest derived patch when it is null."""
    from medseg.models.memory import training_memory_bytes
    patch = base.sampling.patch_size or (round(base.sampling.max_patch_voxels ** (1 / 3)),) * 3
    return training_memory_bytes(list(base.model.filters), list(base.model.strides), patch, batch_size, in_channels,
                                 out_channels)


def _tasks(base: Config, spec: SweepSpec, sweep_id: str, sweep_dir: Path, parent: Tracker, dataset, python: str,
           log: Log) -> tuple[list[Task], dict[str, str]]:
    """The command of each child still to run (a resume where its last run left a checkpoint, else a
    new run with its config written to ``sweep_dir/configs``), and ``"skipped"`` for finished ones.
    Earlier runs that cannot be continued are tagged ``medseg.superseded`` (and marked KILLED)."""
    client, status, timings, uri = parent.client, {}, {}, base.tracking.tracking_uri
    children = spec.children()
    earlier: dict[str, list] = {}  # runs of earlier attempts, by child key (only this process adds runs now)
    for r in _find_runs(client, parent.experiment_id, sweep_id, "child"):
        earlier.setdefault(r.data.tags.get(SWEEP_KEY_TAG), []).append(r)
    tasks = []
    for i, child in enumerate(children, 1):
        runs = earlier.get(child.key, [])
        if any(r.info.status == "FINISHED" for r in runs):
            status[child.key] = "skipped"
            log(f"[{i}/{len(children)}] {child.key}: finished before, skipped")
            continue
        resumable = [r for r in runs if (Path(r.data.tags.get(RUN_DIR_TAG, "/nonexistent"))
                                         / "checkpoints" / "last.pt").is_file()]
        for r in runs:  # runs that cannot be continued are left out of the sweep's results
            if r not in resumable[:1]:
                client.set_tag(r.info.run_id, SUPERSEDED_TAG, "true")
                if r.info.status == "RUNNING":
                    client.set_terminated(r.info.run_id, "KILLED")
        if resumable:
            cmd = [python, "-m", "medseg", "train", "--quiet", "--resume", resumable[0].data.tags[RUN_DIR_TAG],
                   "--tracking-uri", uri]
            note = f"resuming {resumable[0].info.run_id}"
        else:
            seconds = None
            if spec.budget == "minutes":
                seconds = _measure_seconds_per_iteration(base, child, len(dataset.modality), dataset.num_classes,
                                                         timings)
            iterations = child_iterations(spec, child.batch_size, seconds)
            cfg = child_config(base, child, iterations=iterations, spec=spec, sweep_id=sweep_id,
                               parent_run_id=parent.run_id, output_dir=sweep_dir / "runs")
            path = sweep_dir / "configs" / f"{child.key}.yaml"
            atomic_write_text(path, config_to_yaml(cfg))
            cmd = [python, "-m", "medseg", "train", "--quiet", "--config", str(path)]
            note = (f"{cfg.train.epochs * cfg.train.iterations_per_epoch} iterations at batch size "
                    f"{child.batch_size}, lr {cfg.train.lr:.3g}" + (f" (measured {seconds:.3f} s/it)" if seconds else ""))
        tasks.append(Task(child.key, cmd, f"[{i}/{len(children)}] {child.key}: {note}",
                          _iteration_bytes(base, child.batch_size, len(dataset.modality), dataset.num_classes)))
    return tasks, status
