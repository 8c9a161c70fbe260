"""A whole training run: dataset -> fingerprint -> plan -> data -> model -> fit -> validation ->
model directory, tracked in MLflow. This is what ``medseg train`` calls."""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose, EnsureTyped
from monai.utils import set_determinism

from medseg import transforms as mt
from medseg.atomic import atomic_write_text
from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.config import Config, config_to_yaml, flatten
from medseg.data import kfold_splits, load_or_compute_fingerprint, read_dataset
from medseg.data.dataset import case_list_digest
from medseg.data.folds import save_split
from medseg.devices import effective_compile, resolve_device
from medseg.errors import ConfigError, Interrupted, MedsegError
from medseg.inference.pyfunc import LOGGED_MODEL_NAME
from medseg.inference.sliding_window import make_inferer
from medseg.keys import (
    BEST_DICE_MEAN,
    EPOCH,
    LEARNING_RATE,
    PARENT_RUN_TAG,
    PATCHES_PER_SECOND,
    PEAK_MEMORY_MB,
    PLANNED_TAG,
    PRECISE_BN_PATCHES,
    RUN_DIR_TAG,
    SECONDS_PER_ITERATION,
    SINGLE_EXAMPLE_CONV_TAG,
    TRAIN_LOSS,
    VAL_DICE_MEAN,
)
from medseg.models import NetworkSpec, build_unet
from medseg.models.directory import save_model_dir
from medseg.models.memory import available_memory_bytes, peak_memory_mb, training_memory_bytes
from medseg.models.planner import NETWORK_PLAN_FILE, NetworkPlan
from medseg.norm_registry import REGISTRY
from medseg.plan import Plan, make_plan
from medseg.plots import learning_curve, overlay_slices
from medseg.precision import effective_amp, grad_scaler
from medseg.progress import ProgressFn, silent
from medseg.signals import StopRequest, stop_on_signals
from medseg.tracking import RankTracker, Tracker, existing_store, resolve_tracking_uri
from medseg.training import distributed as dist
from medseg.training.loop import Step, dice_ce_loss, train_epoch
from medseg.training.optim import build_optimizer, build_scheduler, poly_lr_factor
from medseg.training.patch_stream import (
    DeviceAugmentation,
    EpochPatchStream,
    EpochSampler,
)
from medseg.training.state import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    NETWORK,
    TrainState,
    load_training_state,
    restore,
    save_training_state,
)
from medseg.training.bn_modes import batch_norm_modes, training_batches
from medseg.training.init_from import initialize_from
from medseg.training.planning import resolve_auto
from medseg.training.validation import Validator

Log = Callable[[str], None]


@dataclass
class TrainingResult:
    """What a finished run produced.

    Attributes:
        run_id: the MLflow run id.
        run_dir: the local run folder (config, split, fingerprint, checkpoints, plots, model).
        model_dir: the best model as a self-contained model directory.
        best_dice: best mean validation Dice (foreground classes) and its epoch.
        val_dice: per label name, Dice of the best model on the validation fold.
        val_hd95: per label name, HD95 in mm of the best model (NaN if not computed).
        history: per-epoch metrics.
        mlflow_model: the logged MLflow Model's URI (``models:/m-...``), if ``tracking.log_model``.
        registered: the registered version's URI (``models:/NAME/VERSION``), with ``--register``.
    """

    run_id: str
    run_dir: Path
    model_dir: Path
    best_dice: float
    best_epoch: int
    val_dice: dict[str, float]
    val_hd95: dict[str, float]
    history: list[dict] = field(default_factory=list)
    mlflow_model: str | None = None
    registered: str | None = None


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU (see :func:`medseg.devices.resolve_device`).

    Raises:
        ConfigError: ``train.device`` names no usable device.
    """
    return resolve_device(name, "train.device")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "dataset"


def find_run_dir(resume: str | Path, tracking_uri: str | None = None) -> Path:
    """A run folder given as a path, or the folder of an MLflow run id (its ``medseg.run_dir`` tag).

    Raises:
        MedsegError: neither a run folder with ``checkpoints/last.pt`` nor a known MLflow run id.
    """
    path = Path(resume)
    if not path.exists():
        run_id = str(resume)
        try:
            store = existing_store(tracking_uri)  # looking a run id up must not create a store
        except MedsegError:
            raise MedsegError("not a run folder, and there is no MLflow store at "
                              f"{resolve_tracking_uri(tracking_uri)} to look it up as a run id", resume) from None
        try:
            run = Tracker.client_for(store).get_run(run_id)
            path = Path(run.data.tags[RUN_DIR_TAG])
        except Exception:
            raise MedsegError("not a run folder, nor an MLflow run id known to the tracking store "
                              f"{resolve_tracking_uri(tracking_uri)}", resume) from None
    if not (path / "checkpoints" / "last.pt").is_file():
        raise MedsegError("no checkpoints/last.pt in this run folder: nothing to resume", path)
    return path


def run_training(cfg: Config, *, resume_dir: Path | None = None, progress: ProgressFn = silent,
                 log: Log = lambda s: None) -> TrainingResult:
    """Train and validate one model as configured by ``cfg`` (validated; ``cfg.data.root`` set).

    Args:
        resume_dir: a run folder to continue from its ``checkpoints/last.pt``, in the same MLflow run.

    Raises:
        DataError: bad dataset (checked before any training).
        ConfigError: patch size vs network, unknown norm, group/channel mismatch.
        MedsegError: the MLflow store cannot be reached; the checkpoint cannot be loaded.
        TrainingInterrupted: SIGTERM/SIGINT; a checkpoint was saved first.
    """
    if cfg.data.root is None:
        raise ConfigError("no dataset: set data.root in the config or pass --data DIR", "data.root")
    set_determinism(seed=cfg.seed, use_deterministic_algorithms=cfg.train.deterministic)
    device = select_device(cfg.train.device)
    info = dist.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    if not info.is_main:
        progress, log = silent, (lambda s: None)
    try:
        result = _run(cfg, resume_dir, device, info, progress, log)
        dist.barrier(info)  # no rank leaves while another still has collectives in flight
        return result
    finally:
        dist.shutdown()


@dataclass
class RunContext:
    """What every step of a run reads: its settings, where it runs, where it writes.

    Attributes:
        cfg: the validated config. plan: the resolved plan. net_spec: the network.
        device: the training device. amp: the effective autocast mode (:mod:`medseg.precision`).
        info: DDP rank info. progress, log: progress bars and log lines (silent on ranks > 0).
        run_dir: the run folder. tracker: its MLflow run (a no-op :class:`RankTracker` on ranks > 0).
        network_plan: what the planner chose for the config's ``auto`` values (None without any).
        compile, compile_reason: whether the training step is compiled, and why
            (:func:`medseg.devices.effective_compile`).
    """

    cfg: Config
    plan: Plan
    net_spec: NetworkSpec
    device: torch.device
    amp: str
    info: dist.DistInfo
    progress: ProgressFn
    log: Log
    run_dir: Path | None = None
    tracker: Tracker | RankTracker | None = None
    network_plan: NetworkPlan | None = None
    compile: bool = False
    compile_reason: str = ""

    @property
    def checkpoints(self) -> Path:
        """The run's ``checkpoints/`` folder (``last.pt``, ``best.pt``)."""
        return self.run_dir / "checkpoints"

    @property
    def batch_statistics(self) -> bool:
        """The norm pools statistics over the batch (see :attr:`medseg.norm_registry.Norm.batch_statistics`)."""
        return REGISTRY[self.net_spec.norm].batch_statistics


def _run(cfg: Config, resume_dir: Path | None, device: torch.device, info: dist.DistInfo, progress: ProgressFn,
         log: Log) -> TrainingResult:
    # --- data checks, fingerprint, plan: everything that can fail on user input, before any work
    spec = read_dataset(cfg.data.root)
    if not info.is_main:
        dist.barrier(info)  # rank 0 computes and caches the fingerprint first
    fingerprint, _ = load_or_compute_fingerprint(spec, cfg.data.cache_dir, progress)
    if info.is_main:
        dist.barrier(info)
    cfg, network_plan = resolve_auto(cfg, fingerprint, device)  # `auto` network, patch, batch: planned here
    net_spec = NetworkSpec.from_config(cfg.model, len(spec.modality), spec.num_classes)
    network = build_unet(net_spec, seed=cfg.seed).to(device)  # initial weights from the seed alone (paired study)
    plan = make_plan(fingerprint, target_spacing=cfg.preprocess.target_spacing, patch_size=cfg.sampling.patch_size,
                     strides=net_spec.strides, image_interpolation=cfg.preprocess.image_interpolation,
                     crop_foreground=cfg.preprocess.crop_foreground, max_patch_voxels=cfg.sampling.max_patch_voxels)
    split = kfold_splits([c.case_id for c in spec.cases], cfg.data.num_folds)[cfg.data.fold]
    by_id = {c.case_id: c.as_dict() for c in spec.cases}
    train_items = [by_id[i] for i in split["train"]]
    val_items = [by_id[i] for i in split["val"]]

    resumed = None
    if resume_dir is not None:
        last = resume_dir / "checkpoints" / LAST_CHECKPOINT
        try:
            resumed = load_training_state(last, map_location=device)
        except Exception as e:
            raise MedsegError(f"checkpoint cannot be loaded ({type(e).__name__}: {str(e)[:200]})", last) from None
        _check_resumable(resume_dir, cfg, fingerprint, split)
    _check_memory(cfg, net_spec, plan.patch_size, device)
    amp = effective_amp(device, cfg.train.amp)  # what runs: bf16 on CPU only where it is native
    compiled, why = effective_compile(cfg.train.compile, device, cfg.train.epochs * cfg.train.iterations_per_epoch)
    ctx = RunContext(cfg, plan, net_spec, device, amp, info, progress, log, network_plan=network_plan,
                     compile=compiled, compile_reason=why)
    for reason in network_plan.reasons if network_plan else []:
        log(f"planned: {reason}")
    init_tags = {}
    if cfg.train.init_from and resumed is None:  # fine-tuning; a resumed run continues from its own checkpoint
        init_tags = initialize_from(network, cfg.train.init_from, plan, cfg.tracking.tracking_uri, log)
    _open_run(ctx, spec.name, resumed[0] if resumed else None, resume_dir,
              f"{len(train_items)} training / {len(val_items)} validation cases")
    if init_tags:
        ctx.tracker.set_tags(init_tags)
    try:
        if resumed is None and info.is_main:
            _record_inputs(ctx, spec, fingerprint, split)
        result = _fit(ctx, network, _build(ctx, network, train_items, val_items), resumed)
    except BaseException as e:
        ctx.tracker.end("KILLED" if isinstance(e, (KeyboardInterrupt, TrainingInterrupted)) else "FAILED")
        raise
    ctx.tracker.end("FINISHED")
    return result


def _check_memory(cfg: Config, net_spec: NetworkSpec, patch_size, device: torch.device) -> None:
    """Refuse a patch and batch whose training iteration cannot fit in the device's free memory.

    Raises:
        ConfigError: the estimate (:func:`medseg.models.memory.training_memory_bytes`) exceeds it.
    """
    need = training_memory_bytes(net_spec.filters, net_spec.strides, patch_size, cfg.train.batch_size,
                                 net_spec.in_channels, net_spec.out_channels)
    free = available_memory_bytes(device)
    if free is not None and need > free:
        raise ConfigError(f"patch {tuple(patch_size)} at batch size {cfg.train.batch_size} needs at least "
                          f"{need / 2**30:.1f} GiB per training iteration, and {device} has {free / 2**30:.1f} GiB "
                          "free: use a smaller sampling.patch_size, train.batch_size or model.filters",
                          "sampling.patch_size")


def _new_run_dir(output_dir: Path, name: str) -> Path:
    """Create ``output_dir/name``, or ``name-2``, ``name-3``... when taken (two runs with one name, or
    two default names started in the same second, never share a folder).

    Raises:
        ConfigError: ``output_dir`` is not a folder or cannot be created.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError("output_dir is a file (or under one), not a folder", output_dir) from None
    except OSError as e:
        raise ConfigError(f"output_dir cannot be created ({e.strerror})", output_dir) from None
    for n in range(1, 10_000):
        run_dir = output_dir / (name if n == 1 else f"{name}-{n}")
        try:
            run_dir.mkdir(exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot create the run folder ({e.strerror})", run_dir) from None
    raise ConfigError(f"too many runs named {name!r}", output_dir)


FINGERPRINT_IDENTITY = ("labels", "num_cases", "cases", "label_voxels")  # what makes the data the same


def _check_resumable(run_dir: Path, cfg: Config, fingerprint: dict, split: dict) -> None:
    """Refuse to resume on data other than the run's (its split.json and fingerprint.json).

    Raises:
        MedsegError: naming what differs.
    """
    try:
        saved_split = json.loads((run_dir / "split.json").read_text())
        saved = json.loads((run_dir / "fingerprint.json").read_text())
    except (OSError, ValueError) as e:
        raise MedsegError(f"split.json or fingerprint.json is missing or unreadable ({type(e).__name__}): cannot "
                          "check that the data is the run's", run_dir) from None
    if sorted(saved_split.get("train", [])) != sorted(split["train"]) or \
            sorted(saved_split.get("val", [])) != sorted(split["val"]):
        raise MedsegError(f"the dataset {cfg.data.root} does not give this run's training/validation cases "
                          "(split.json): resume on the data the run started with", run_dir)
    differ = [k for k in FINGERPRINT_IDENTITY if json.dumps(saved.get(k), sort_keys=True)
              != json.dumps(json.loads(json.dumps(fingerprint.get(k))), sort_keys=True)]
    if differ:
        raise MedsegError(f"the dataset {cfg.data.root} differs from the one this run started with "
                          f"(fingerprint.json: {', '.join(differ)} changed): resume on the same data", run_dir)


def _open_run(ctx: RunContext, dataset: str, state: TrainState | None, resume_dir: Path | None, cases: str) -> None:
    """Set ``ctx.run_dir`` and ``ctx.tracker``: the resumed run's (``state`` from its last
    checkpoint), a new one (rank 0, which broadcasts it), or rank 0's (other ranks, which log nothing)."""
    cfg, info, log = ctx.cfg, ctx.info, ctx.log
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    if state is not None:
        ctx.run_dir = resume_dir
        ctx.tracker = Tracker.attach(uri, state.mlflow_run_id) if info.is_main else RankTracker(state.mlflow_run_id)
        ctx.tracker.start_system_metrics(cfg.tracking.system_metrics_interval, resume=True)
        log(f"MLflow run {ctx.tracker.run_id} in {ctx.tracker.uri} (resumed)")
        return
    if not info.is_main:
        ctx.run_dir, run_id = dist.broadcast(None, info)
        ctx.tracker = RankTracker(run_id)
        return
    m = cfg.model
    tags = {"norm": m.norm, "batch_size": cfg.train.batch_size, "fold": cfg.data.fold, "dataset": dataset,
            "seed": cfg.seed, "world_size": info.world_size, "amp": ctx.amp, SINGLE_EXAMPLE_CONV_TAG: "onednn",
            "compile": ctx.compile, "compile_reason": ctx.compile_reason, **cfg.tracking.tags}
    if ctx.batch_statistics and info.enabled:
        tags["sync_bn"] = cfg.train.sync_bn
    if cfg.tracking.parent_run_id:
        tags[PARENT_RUN_TAG] = cfg.tracking.parent_run_id
    run_name = cfg.tracking.run_name or (f"{_slug(dataset)}_{m.norm}_bs{cfg.train.batch_size}_fold"
                                         f"{cfg.data.fold}_{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = _new_run_dir(Path(cfg.output_dir).resolve(), run_name)
    try:
        tracker = Tracker(uri, cfg.tracking.experiment, run_name, {**tags, RUN_DIR_TAG: str(run_dir)})
    except BaseException:
        run_dir.rmdir()  # still empty: no half-made run folder is left behind
        raise
    dist.broadcast((run_dir, tracker.run_id), info)
    ctx.run_dir, ctx.tracker = run_dir, tracker
    tracker.start_system_metrics(cfg.tracking.system_metrics_interval)
    log(f"run {run_name}: {cases}, patch {ctx.plan.patch_size}, spacing "
        f"{tuple(round(s, 3) for s in ctx.plan.target_spacing)} mm, norm {m.norm}, device {ctx.device}, "
        f"autocast {ctx.amp}" + (f", {info.world_size} processes (DDP)" if info.enabled else ""))
    log(f"MLflow run {tracker.run_id} in {tracker.uri}")


def _record_inputs(ctx: RunContext, spec, fingerprint: dict, split: dict) -> None:
    """Write and log what defines the run: resolved config, split, fingerprint, plan, params, and the
    training and validation cases as MLflow dataset inputs (digest of case ids and file SHA-256s)."""
    cfg, plan, run_dir, tracker = ctx.cfg, ctx.plan, ctx.run_dir, ctx.tracker
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    save_split(split, run_dir / "split.json")
    atomic_write_text(run_dir / "fingerprint.json", json.dumps(fingerprint, indent=1))
    atomic_write_text(run_dir / "plan.json", json.dumps(plan.to_dict(), indent=1))
    plan_params = {f"plan.{k}": json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
                   for k, v in plan.to_dict().items()}
    tracker.log_params({**flatten(cfg), **plan_params, "data.num_train_cases": len(split["train"]),
                        "data.num_val_cases": len(split["val"])})
    names = ["config.yaml", "split.json", "fingerprint.json", "plan.json"]
    if ctx.network_plan is not None:  # what was planned, and why
        atomic_write_text(run_dir / NETWORK_PLAN_FILE, json.dumps(ctx.network_plan.to_dict(), indent=1))
        tracker.set_tags({PLANNED_TAG: "true"})
        names.append(NETWORK_PLAN_FILE)
    for name in names:
        tracker.log_artifact(run_dir / name)
    by_id = {c.case_id: c for c in spec.cases}
    for context, key in (("training", "train"), ("validation", "val")):
        cases = [by_id[i] for i in split[key]]
        tracker.log_dataset(f"{spec.name}_fold{cfg.data.fold}_{context}", case_list_digest(cases), str(spec.root),
                            context, {"num_cases": len(cases), "case_ids": [c.case_id for c in cases]})


def _datasets(cfg: Config, plan, train_items, val_items, progress, world_size: int = 1):
    """Preprocessed validation volumes, and the training patch stream (see training/patch_stream.py)."""
    pre = mt.preprocessing(plan)
    prep = Compose([mt.patch_preparation(plan), EnsureTyped(keys=("image", "label"), track_meta=False)])
    rand = mt.patch_sampling_and_augmentation(plan, foreground_oversampling=cfg.sampling.foreground_oversampling,
                                              augment=cfg.augment)
    val = [pre(it) for it in progress(val_items, "Caching validation volumes", len(val_items))]
    if cfg.data.cache == "memory":
        volumes = [prep(pre(it)) for it in progress(train_items, "Caching training volumes", len(train_items))]
    elif cfg.data.cache == "disk":
        volumes = PersistentDataset(train_items, transform=Compose([pre, prep]),
                                    cache_dir=Path(cfg.data.cache_dir) / "preprocessed")
    else:
        volumes = Dataset(train_items, transform=Compose([pre, prep]))
    stream = EpochPatchStream(volumes, rand, cfg.train.iterations_per_epoch * cfg.train.batch_size * world_size,
                              cfg.seed, worker_steps=mt.CROP_STEPS if cfg.augment.on_device else None)
    return stream, val


class TrainingInterrupted(Interrupted):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run can be resumed."""


@dataclass
class Parts:
    """The objects one training run works with (built by :func:`_build`).

    Attributes:
        network: the plain network (its weights are what is saved). model: what the loop calls
        (``network`` wrapped in DDP and/or ``torch.compile`` as configured). loader, sampler: the
        patch DataLoader and the sampler that gives it each epoch's stream indices. step: the
        optimization step (loss, optimizer, schedule, precision, augmentation on the device).
        validator: the validation (:class:`~medseg.training.validation.Validator`).
        stream: the training patch stream (also what re-estimates batch norm's statistics at the end).
    """

    network: torch.nn.Module
    model: torch.nn.Module
    loader: DataLoader | None
    sampler: EpochSampler
    step: Step
    validator: Validator
    stream: EpochPatchStream


def _build(ctx: RunContext, network: torch.nn.Module, train_items: list[dict], val_items: list[dict]) -> Parts:
    """The data, loader, wrapped model, loss, optimizer, schedule and validator of a run."""
    cfg, t, info, device = ctx.cfg, ctx.cfg.train, ctx.info, ctx.device
    if t.channels_last:
        network.to(memory_format=torch.channels_last_3d)
    stream, val_volumes = _datasets(cfg, ctx.plan, train_items, val_items, ctx.progress, info.world_size)
    model = dist.wrap(network, info, device, sync_bn=t.sync_bn and ctx.batch_statistics)
    if ctx.compile:  # training forward only; validation runs the eager network (other window batch shapes)
        model = torch.compile(model)
    sampler = EpochSampler()  # one loader for the run: persistent workers keep their cached volumes
    workers = cfg.data.num_workers
    loader = DataLoader(stream, batch_size=t.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0 and cfg.data.persistent_workers)
    optimizer = build_optimizer(network.parameters(), t.optimizer, t.lr, t.momentum, t.weight_decay)
    scheduler = build_scheduler(optimizer, t.epochs * t.iterations_per_epoch, t.warmup_epochs * t.iterations_per_epoch,
                                t.poly_exponent)
    inferer = make_inferer(ctx.plan.patch_size, cfg.validation.overlap, cfg.validation.sw_batch_size)
    step = Step(dice_ce_loss(), optimizer, scheduler, device, ctx.amp, grad_scaler(device, ctx.amp), t.grad_clip,
                t.channels_last, DeviceAugmentation(stream) if cfg.augment.on_device else None)
    return Parts(network, model, loader, sampler, step, Validator(network, val_volumes, inferer, ctx.plan, ctx.amp, info),
                 stream)


def _fit(ctx: RunContext, network: torch.nn.Module, parts: Parts,
         resumed: tuple[TrainState, dict] | None) -> TrainingResult:
    """The training loop: each epoch trains, validates when due (keeping ``best.pt``), checkpoints
    ``last.pt`` and then logs its metrics; at the end the final model is measured and the best
    epoch's weights are validated and saved as the model directory (:func:`_finish`)."""
    cfg, t = ctx.cfg, ctx.cfg.train
    state = _start_state(ctx, parts, resumed)
    try:
        with stop_on_signals() as stop:
            for epoch in range(state.next_epoch, t.epochs):
                stats = _train_epoch(ctx, parts, state, epoch, stop)
                row = _epoch_row(ctx, stats, epoch)
                if (epoch + 1) % cfg.validation.every_n_epochs == 0 or epoch == t.epochs - 1:
                    row.update(parts.validator.epoch_metrics(epoch, cfg.validation.batch_stats and ctx.batch_statistics,
                                                             ctx.progress))
                    if state.improve(row[VAL_DICE_MEAN], epoch):
                        _save_best(ctx, network, epoch, state.best_val_dice_mean)
                state.end_epoch(row)
                _save_last(ctx, parts, state)  # first the checkpoint, then the metrics (a resume logs what is missing)
                ctx.tracker.log_metrics({k: v for k, v in row.items() if k != EPOCH}, step=epoch)
                ctx.log(_epoch_line(ctx, row))
    finally:
        parts.loader = None  # ends persistent DataLoader workers before the final validation (or on error)
    # the final model (what the normalizer study compares), before the best epoch's weights replace it
    final = parts.validator.final_model_metrics(t.epochs - 1, ctx.progress)
    if ctx.batch_statistics:  # the same final network with each window's and with re-estimated statistics
        patches = min(PRECISE_BN_PATCHES, t.epochs * t.iterations_per_epoch * t.batch_size)  # what it trained on
        batches = training_batches(parts.stream, t.batch_size, patches, augmentation=parts.step.device_augment,
                                   device=ctx.device)
        final.update(batch_norm_modes(parts.validator, batches, ctx.progress))
    ctx.tracker.log_metrics(final, step=t.epochs - 1)
    dist.barrier(ctx.info)  # best.pt is written by rank 0 (the run folder must be on a shared filesystem)
    network.load_state_dict(load_checkpoint(ctx.checkpoints / BEST_CHECKPOINT, map_location=ctx.device)[NETWORK])
    return _finish(ctx, parts.validator, state)


def _start_state(ctx: RunContext, parts: Parts, resumed: tuple[TrainState, dict] | None) -> TrainState:
    """A fresh :class:`TrainState`, or the resumed one with its weights and optimizer states loaded
    (and the metrics of its last epoch logged if the interrupted run had not logged them yet)."""
    if resumed is None:
        return TrainState(mlflow_run_id=ctx.tracker.run_id, seed=ctx.cfg.seed)
    state, weights = resumed
    restore(weights, parts.network, parts.step.optimizer, parts.step.scheduler, parts.step.scaler)
    last = state.history[-1] if state.history else None
    if last is not None and not ctx.tracker.has_metric(TRAIN_LOSS, last[EPOCH]):
        ctx.tracker.log_metrics({k: v for k, v in last.items() if k != EPOCH}, step=last[EPOCH])
    ctx.log(f"resuming at epoch {state.next_epoch + 1}, iteration {state.next_iteration}")
    return state


def _train_epoch(ctx: RunContext, parts: Parts, state: TrainState, epoch: int, stop: StopRequest) -> dict:
    """One epoch of :func:`~medseg.training.loop.train_epoch` from the state's position in it,
    checkpointing every ``train.checkpoint_every_iterations``.

    Raises:
        TrainingInterrupted: a stop signal arrived (a checkpoint was saved first).
        MedsegError: out of device memory (a checkpoint was saved first).
    """
    t, info = ctx.cfg.train, ctx.info
    losses = state.epoch_losses  # state.next_epoch is this epoch (TrainState.end_epoch advanced it)
    parts.sampler.indices = dist.rank_indices(epoch, t.iterations_per_epoch * t.batch_size * info.world_size,
                                              state.next_iteration, t.batch_size, info)
    every = t.checkpoint_every_iterations

    def save_mid_epoch(ls: list[float]) -> None:
        state.next_iteration = len(ls)
        _save_last(ctx, parts, state)

    def after_iteration(ls: list[float]) -> None:
        if every and len(ls) % every == 0:
            save_mid_epoch(ls)

    try:
        stats = train_epoch(parts.model, parts.loader, parts.step, progress=ctx.progress,
                            description=f"epoch {epoch + 1}/{t.epochs}", losses=losses,
                            should_stop=lambda: dist.any_rank(bool(stop), info), after_iteration=after_iteration)
    except torch.OutOfMemoryError:
        parts.step.optimizer.zero_grad(set_to_none=True)
        save_mid_epoch(losses)
        raise MedsegError(f"out of {ctx.device.type} memory at batch size {t.batch_size}, patch "
                          f"{ctx.plan.patch_size}: lower train.batch_size or sampling.patch_size. A checkpoint was "
                          f"saved; resume with: medseg train --resume {ctx.run_dir}",
                          ctx.checkpoints / LAST_CHECKPOINT) from None
    if stats["interrupted"]:
        save_mid_epoch(losses)
        raise TrainingInterrupted(f"{stop.signal} received: stopped at epoch {epoch + 1}, iteration {len(losses)}; "
                                  f"checkpoint saved. Resume with: medseg train --resume {ctx.run_dir}",
                                  ctx.checkpoints / LAST_CHECKPOINT)
    return stats


def _epoch_row(ctx: RunContext, stats: dict, epoch: int) -> dict:
    """An epoch's training metrics (its learning rate is the schedule's at the epoch's start)."""
    t, info = ctx.cfg.train, ctx.info
    warmup = t.warmup_epochs * t.iterations_per_epoch
    lr = t.lr * poly_lr_factor(epoch * t.iterations_per_epoch, t.epochs * t.iterations_per_epoch, warmup,
                               t.poly_exponent)
    return {EPOCH: epoch, TRAIN_LOSS: dist.mean_over_ranks(stats["train_loss"], info), LEARNING_RATE: lr,
            SECONDS_PER_ITERATION: stats["seconds_per_iteration"],
            PATCHES_PER_SECOND: stats["patches_per_second"] * info.world_size,
            PEAK_MEMORY_MB: peak_memory_mb(ctx.device)}


def _epoch_line(ctx: RunContext, row: dict) -> str:
    """The log line of a finished epoch."""
    dice = " ".join(f"{n}={row[f'val_dice_{n}']:.3f}" for n in ctx.plan.foreground_labels.values()) \
        if VAL_DICE_MEAN in row else ""
    return (f"epoch {row[EPOCH] + 1}/{ctx.cfg.train.epochs} loss {row[TRAIN_LOSS]:.4f} lr {row[LEARNING_RATE]:.2e} "
            f"{row[SECONDS_PER_ITERATION]:.3f} s/it {row[PATCHES_PER_SECOND]:.1f} patches/s {dice}")


def _save_last(ctx: RunContext, parts: Parts, state: TrainState) -> None:
    """``checkpoints/last.pt`` from rank 0."""
    if ctx.info.is_main:
        save_training_state(ctx.checkpoints / LAST_CHECKPOINT, state, parts.network, parts.step.optimizer,
                            parts.step.scheduler, parts.step.scaler)


def _save_best(ctx: RunContext, network: torch.nn.Module, epoch: int, dice: float) -> None:
    """``checkpoints/best.pt`` (weights, epoch, mean Dice) from rank 0."""
    if ctx.info.is_main:
        save_checkpoint({NETWORK: network.state_dict(), "epoch": epoch, VAL_DICE_MEAN: dice},
                        ctx.checkpoints / BEST_CHECKPOINT)


def _finish(ctx: RunContext, validator: Validator, state: TrainState) -> TrainingResult:
    """The end of a run, with the best weights loaded: final validation (HD95, TTA if configured),
    summary metrics, plots, per-case JSON and the model directory (written by rank 0)."""
    cfg, plan = ctx.cfg, ctx.plan
    final = validator.run(hd95=cfg.validation.hd95, progress=ctx.progress, keep_first=True, tta=cfg.validation.tta)
    val_dice, mean_dice = validator.dice_by_label(final)
    val_hd95 = {name: final["per_class"][k]["hd95"] for k, name in plan.foreground_labels.items()}
    summary = {f"best_val_dice_{n}": d for n, d in val_dice.items()}
    summary.update({f"best_val_hd95_{n}": h for n, h in val_hd95.items()})
    summary[BEST_DICE_MEAN] = mean_dice
    hd = [h for h in val_hd95.values() if math.isfinite(h)]
    if hd:
        summary["best_val_hd95_mean"] = float(np.mean(hd))
    if cfg.validation.batch_stats and ctx.batch_statistics:
        gap = validator.batch_stats_gap(summary[BEST_DICE_MEAN], tta=cfg.validation.tta)
        summary.update({f"best_{k}": v for k, v in gap.items()})
    uris = _write_outputs(ctx, validator.network, final, summary, state) if ctx.info.is_main else (None, None)
    return TrainingResult(run_id=ctx.tracker.run_id, run_dir=ctx.run_dir, model_dir=ctx.run_dir / "model",
                          best_dice=state.best_val_dice_mean, best_epoch=state.best_epoch, val_dice=val_dice,
                          val_hd95=val_hd95, history=state.history, mlflow_model=uris[0], registered=uris[1])


def _write_outputs(ctx: RunContext, network: torch.nn.Module, final: dict, summary: dict,
                   state: TrainState) -> tuple[str | None, str | None]:
    """Log the summary metrics, write and log the plots, the per-case JSON and the model directory;
    log it as an MLflow Model and register it as configured. Returns (logged model URI, registered
    version URI), None where not done."""
    cfg, plan, tracker, run_dir = ctx.cfg, ctx.plan, ctx.tracker, ctx.run_dir
    tracker.log_metrics(summary, step=state.best_epoch)
    tracker.set_tags({"best_epoch": state.best_epoch})
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    learning_curve(state.history, plots / "learning_curve.png", plan.labels)
    if final["first"] is not None:
        img, ref, pred = final["first"]
        overlay_slices(img, ref, pred, plots / "validation_slices.png",
                       title=f"{final['cases'][0]['case_id']}: reference (left) vs prediction (right)")
    tracker.log_artifacts(plots, "plots")
    atomic_write_text(run_dir / "validation_cases.json", json.dumps(final["cases"], indent=1, default=float))
    tracker.log_artifact(run_dir / "validation_cases.json")
    save_model_dir(run_dir / "model", network, plan, ctx.net_spec, extra={
        "mlflow_run_id": tracker.run_id, "best_epoch": state.best_epoch, "validation": summary,
        "sliding_window": {"overlap": cfg.validation.overlap, "sw_batch_size": cfg.validation.sw_batch_size}})
    tracker.log_artifacts(run_dir / "model", "model")
    t = cfg.tracking
    if not t.log_model:
        return None, None
    model_uri = tracker.log_model(run_dir / "model", plan.in_channels, intensity_range=plan.ct_clip)
    ctx.log(f"MLflow Model {model_uri} (also runs:/{tracker.run_id}/{LOGGED_MODEL_NAME})")
    version = tracker.register_model(model_uri, t.register_model, t.register_alias) if t.register_model else None
    return model_uri, version
