"""A whole training run: dataset -> fingerprint -> plan -> data -> model -> fit -> validation ->
model directory, tracked in MLflow. This is what ``medseg train`` calls."""
from __future__ import annotations

import json
import math
import re
import resource
import signal
import threading
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
from medseg.config import Config, ModelConfig, config_to_yaml, flatten
from medseg.data import kfold_splits, load_or_compute_fingerprint, read_dataset
from medseg.data.dataset import case_list_digest
from medseg.data.folds import save_split
from medseg.devices import resolve_device
from medseg.errors import ConfigError, Interrupted, MedsegError
from medseg.inference.sliding_window import effective_amp, make_inferer
from medseg.models import NetworkSpec, build_unet
from medseg.models.directory import save_model_dir
from medseg.models.memory import available_memory_bytes, training_memory_bytes
from medseg.plan import make_plan
from medseg.plots import learning_curve, overlay_slices
from medseg.progress import ProgressFn, silent
from medseg.tracking import RankTracker, Tracker, existing_store, resolve_tracking_uri
from medseg.training import distributed as dist
from medseg.training.checkpoint import load_checkpoint, save_checkpoint
from medseg.training.loop import dice_ce_loss, grad_scaler, train_epoch
from medseg.training.optim import build_optimizer, build_scheduler, poly_lr_factor
from medseg.training.sampling import DeviceAugmentation, EpochPatchStream, EpochSampler
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
    """

    run_id: str
    run_dir: Path
    model_dir: Path
    best_dice: float
    best_epoch: int
    val_dice: dict[str, float]
    val_hd95: dict[str, float]
    history: list[dict] = field(default_factory=list)


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU (see :func:`medseg.devices.resolve_device`).

    Raises:
        ConfigError: ``train.device`` names no usable device.
    """
    return resolve_device(name, "train.device")


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on CUDA, else the process's peak resident set size (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
            path = Path(run.data.tags["medseg.run_dir"])
        except Exception:
            raise MedsegError("not a run folder, nor an MLflow run id known to the tracking store "
                              f"{resolve_tracking_uri(tracking_uri)}", resume) from None
    if not (path / "checkpoints" / "last.pt").is_file():
        raise MedsegError("no checkpoints/last.pt in this run folder: nothing to resume", path)
    return path


def network_spec(m: ModelConfig, in_channels: int, out_channels: int, norm: str | None = None) -> NetworkSpec:
    """The :class:`NetworkSpec` the ``model`` config section describes (``norm`` overrides its norm)."""
    return NetworkSpec(in_channels=in_channels, out_channels=out_channels, filters=list(m.filters),
                       strides=[list(s) if isinstance(s, tuple) else s for s in m.strides], kernel_size=m.kernel_size,
                       norm=norm or m.norm, num_groups=m.num_groups, deep_supervision=m.deep_supervision,
                       res_block=m.res_block)


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


def _run(cfg: Config, resume_dir: Path | None, device: torch.device, info: dist.DistInfo, progress: ProgressFn,
         log: Log) -> TrainingResult:
    # --- data checks, fingerprint, plan: everything that can fail on user input, before any work
    spec = read_dataset(cfg.data.root)
    if not info.is_main:
        dist.barrier(info)  # rank 0 computes and caches the fingerprint first
    fingerprint, _ = load_or_compute_fingerprint(spec, cfg.data.cache_dir, progress)
    if info.is_main:
        dist.barrier(info)
    m = cfg.model
    net_spec = network_spec(m, len(spec.modality), spec.num_classes)
    network = build_unet(net_spec, seed=cfg.seed).to(device)  # initial weights from the seed alone (paired study)
    plan = make_plan(fingerprint, target_spacing=cfg.preprocess.target_spacing, patch_size=cfg.sampling.patch_size,
                     strides=net_spec.strides, image_interpolation=cfg.preprocess.image_interpolation,
                     crop_foreground=cfg.preprocess.crop_foreground, max_patch_voxels=cfg.sampling.max_patch_voxels)
    split = kfold_splits([c.case_id for c in spec.cases], cfg.data.num_folds)[cfg.data.fold]
    by_id = {c.case_id: c.as_dict() for c in spec.cases}
    train_items = [by_id[i] for i in split["train"]]
    val_items = [by_id[i] for i in split["val"]]

    state = None
    if resume_dir is not None:
        try:
            state = load_checkpoint(resume_dir / "checkpoints" / "last.pt", map_location=device)
        except Exception as e:
            raise MedsegError(f"checkpoint cannot be loaded ({type(e).__name__}: {str(e)[:200]})",
                              resume_dir / "checkpoints" / "last.pt") from None
        _check_resumable(resume_dir, state, cfg, fingerprint, split)
    _check_memory(cfg, net_spec, plan.patch_size, device)
    amp = effective_amp(device, cfg.train.amp)  # what runs: bf16 on CPU only where it is native
    run_dir, tracker = _open_run(cfg, spec.name, plan, device, amp, info, resume_dir, state, log,
                                 f"{len(train_items)} training / {len(val_items)} validation cases")
    try:
        if state is None and info.is_main:
            _record_inputs(cfg, spec, plan, fingerprint, split, run_dir, tracker)
        result = _fit(cfg, plan, net_spec, network, device, amp, train_items, val_items, run_dir, tracker, progress,
                      log, state, info)
    except BaseException as e:
        tracker.end("KILLED" if isinstance(e, (KeyboardInterrupt, TrainingInterrupted)) else "FAILED")
        raise
    tracker.end("FINISHED")
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


def _check_resumable(run_dir: Path, state: dict, cfg: Config, fingerprint: dict, split: dict) -> None:
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


def _open_run(cfg: Config, dataset: str, plan, device: torch.device, amp: str, info: dist.DistInfo,
              resume_dir: Path | None, state: dict | None, log: Log, cases: str) -> tuple[Path, Tracker | RankTracker]:
    """The run folder and its MLflow run: the resumed run's (``state`` from its last checkpoint), a new
    one (rank 0, which broadcasts it), or rank 0's (other ranks, which log nothing)."""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    if state is not None:
        tracker = Tracker.attach(uri, state["mlflow_run_id"]) if info.is_main else RankTracker(state["mlflow_run_id"])
        tracker.start_system_metrics(cfg.tracking.system_metrics_interval, resume=True)
        log(f"MLflow run {tracker.run_id} in {tracker.uri} (resumed)")
        return resume_dir, tracker
    if not info.is_main:
        run_dir, run_id = dist.broadcast(None, info)
        return run_dir, RankTracker(run_id)
    m = cfg.model
    tags = {"norm": m.norm, "batch_size": cfg.train.batch_size, "fold": cfg.data.fold, "dataset": dataset,
            "seed": cfg.seed, "world_size": info.world_size, "amp": amp, **cfg.tracking.tags}
    if m.norm == "batch" and info.enabled:
        tags["sync_bn"] = cfg.train.sync_bn
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run_name = cfg.tracking.run_name or (f"{_slug(dataset)}_{m.norm}_bs{cfg.train.batch_size}_fold"
                                         f"{cfg.data.fold}_{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = _new_run_dir(Path(cfg.output_dir).resolve(), run_name)
    try:
        tracker = Tracker(uri, cfg.tracking.experiment, run_name, {**tags, "medseg.run_dir": str(run_dir)})
    except BaseException:
        run_dir.rmdir()  # still empty: no half-made run folder is left behind
        raise
    dist.broadcast((run_dir, tracker.run_id), info)
    tracker.start_system_metrics(cfg.tracking.system_metrics_interval)
    log(f"run {run_name}: {cases}, patch {plan.patch_size}, spacing "
        f"{tuple(round(s, 3) for s in plan.target_spacing)} mm, norm {m.norm}, device {device}, autocast {amp}"
        + (f", {info.world_size} processes (DDP)" if info.enabled else ""))
    log(f"MLflow run {tracker.run_id} in {tracker.uri}")
    return run_dir, tracker


def _record_inputs(cfg: Config, spec, plan, fingerprint: dict, split: dict, run_dir: Path, tracker: Tracker) -> None:
    """Write and log what defines the run: resolved config, split, fingerprint, plan, params, and the
    training and validation cases as MLflow dataset inputs (digest of case ids and file SHA-256s)."""
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    save_split(split, run_dir / "split.json")
    (run_dir / "fingerprint.json").write_text(json.dumps(fingerprint, indent=1))
    (run_dir / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1))
    plan_params = {f"plan.{k}": json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
                   for k, v in plan.to_dict().items()}
    tracker.log_params({**flatten(cfg), **plan_params, "data.num_train_cases": len(split["train"]),
                        "data.num_val_cases": len(split["val"])})
    for name in ("config.yaml", "split.json", "fingerprint.json", "plan.json"):
        tracker.log_artifact(run_dir / name)
    by_id = {c.case_id: c for c in spec.cases}
    for context, key in (("training", "train"), ("validation", "val")):
        cases = [by_id[i] for i in split[key]]
        tracker.log_dataset(f"{spec.name}_fold{cfg.data.fold}_{context}", case_list_digest(cases), str(spec.root),
                            context, {"num_cases": len(cases), "case_ids": [c.case_id for c in cases]})


def _datasets(cfg: Config, plan, train_items, val_items, progress, world_size: int = 1):
    """Preprocessed validation volumes, and the training patch stream (see training/sampling.py)."""
    pre = mt.preprocessing(plan)
    prep = Compose([mt.patch_preparation(plan), EnsureTyped(keys=("image", "label"), track_meta=False)])
    a = cfg.augment
    rand = mt.patch_sampling_and_augmentation(
        plan, foreground_oversampling=cfg.sampling.foreground_oversampling, flip=a.flip, rotate_scale=a.rotate_scale,
        rotation_degrees=a.rotation_degrees, scale_range=a.scale_range, gamma=a.gamma, noise=a.noise,
        brightness_contrast=a.brightness_contrast, probability=a.probability)
    val = [pre(it) for it in progress(val_items, "Caching validation volumes", len(val_items))]
    if cfg.data.cache == "memory":
        volumes = [prep(pre(it)) for it in progress(train_items, "Caching training volumes", len(train_items))]
    elif cfg.data.cache == "disk":
        volumes = PersistentDataset(train_items, transform=Compose([pre, prep]),
                                    cache_dir=Path(cfg.data.cache_dir) / "preprocessed")
    else:
        volumes = Dataset(train_items, transform=Compose([pre, prep]))
    stream = EpochPatchStream(volumes, rand, cfg.train.iterations_per_epoch * cfg.train.batch_size * world_size,
                              cfg.seed, worker_steps=mt.CROP_STEPS if a.on_device else None)
    return stream, val


class TrainingInterrupted(Interrupted):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run can be resumed."""


def _finish(cfg: Config, net_spec: NetworkSpec, validator: Validator, run_dir: Path, tracker: Tracker | RankTracker,
            history: list[dict], best: float, best_epoch: int, batch_stats: bool,
            progress: ProgressFn) -> TrainingResult:
    """The end of a run, with the best weights loaded: final validation (HD95, TTA if configured),
    summary metrics, learning curve and validation-slice plots, per-case JSON, model directory
    (the outputs are written by rank 0)."""
    network, plan, info = validator.network, validator.plan, validator.info
    final = validator.run(hd95=cfg.validation.hd95, progress=progress, keep_first=True, tta=cfg.validation.tta)
    val_dice, mean_dice = validator.dice_by_label(final)
    val_hd95 = {name: final["per_class"][k]["hd95"] for k, name in plan.foreground_labels.items()}
    summary = {f"best_val_dice_{n}": d for n, d in val_dice.items()}
    summary.update({f"best_val_hd95_{n}": h for n, h in val_hd95.items()})
    summary["best_val_dice_mean"] = mean_dice
    hd = [h for h in val_hd95.values() if math.isfinite(h)]
    if hd:
        summary["best_val_hd95_mean"] = float(np.mean(hd))
    if batch_stats:
        gap = validator.batch_stats_gap(summary["best_val_dice_mean"], tta=cfg.validation.tta)
        summary.update({f"best_{k}": v for k, v in gap.items()})
    model_dir = run_dir / "model"
    if info.is_main:
        tracker.log_metrics(summary, step=best_epoch)
        tracker.set_tags({"best_epoch": best_epoch})
        plots = run_dir / "plots"
        plots.mkdir(exist_ok=True)
        learning_curve(history, plots / "learning_curve.png", plan.labels)
        if final["first"] is not None:
            img, ref, pred = final["first"]
            overlay_slices(img, ref, pred, plots / "validation_slices.png",
                           title=f"{final['cases'][0]['case_id']}: reference (left) vs prediction (right)")
        tracker.log_artifacts(plots, "plots")
        (run_dir / "validation_cases.json").write_text(json.dumps(final["cases"], indent=1, default=float))
        tracker.log_artifact(run_dir / "validation_cases.json")
        save_model_dir(model_dir, network, plan, net_spec, extra={
            "mlflow_run_id": tracker.run_id, "best_epoch": best_epoch, "validation": summary,
            "sliding_window": {"overlap": cfg.validation.overlap, "sw_batch_size": cfg.validation.sw_batch_size}})
        tracker.log_artifacts(model_dir, "model")
    return TrainingResult(run_id=tracker.run_id, run_dir=run_dir, model_dir=model_dir, best_dice=best,
                          best_epoch=best_epoch, val_dice=val_dice, val_hd95=val_hd95, history=history)


def _restore(state: dict, network, optimizer, scheduler, scaler, tracker: Tracker | RankTracker) -> tuple:
    """Load a last checkpoint's weights and optimizer, scheduler and scaler states in place, and log
    its epoch's metrics if the interrupted run had not logged them yet.

    Returns:
        (best mean Dice, best epoch, history, next epoch, next iteration in it, that epoch's losses so far)
    """
    network.load_state_dict(state["network"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    history = list(state["history"])
    if history and not tracker.has_metric("train_loss", history[-1]["epoch"]):
        tracker.log_metrics({k: v for k, v in history[-1].items() if k != "epoch"}, step=history[-1]["epoch"])
    return (state["best_val_dice_mean"], state["best_epoch"], history, state["next_epoch"], state["next_iteration"],
            list(state["epoch_losses"]))


def _fit(cfg: Config, plan, net_spec, network, device, amp: str, train_items, val_items, run_dir: Path,
         tracker: Tracker | RankTracker,
         progress: ProgressFn, log: Log, state: dict | None = None,
         info: dist.DistInfo = dist.DistInfo()) -> TrainingResult:
    """Build the data, loader, optimizer and schedule, run the epochs (resuming from ``state``, a
    last checkpoint, when given), validate every ``validation.every_n_epochs``, keep ``last.pt`` and
    ``best.pt`` and log each epoch's metrics; then :func:`_finish` with the best weights."""
    t = cfg.train
    if t.channels_last:
        network.to(memory_format=torch.channels_last_3d)
    stream, val_volumes = _datasets(cfg, plan, train_items, val_items, progress, info.world_size)
    per_epoch = t.iterations_per_epoch * t.batch_size * info.world_size
    model = dist.wrap(network, info, device, sync_bn=t.sync_bn and net_spec.norm == "batch")
    if t.compile:  # training forward only; validation runs the eager network (other window batch shapes)
        model = torch.compile(model)
    device_augment = DeviceAugmentation(stream) if cfg.augment.on_device else None
    sampler = EpochSampler()  # one loader for the run: persistent workers keep their cached volumes
    workers = cfg.data.num_workers
    loader = DataLoader(stream, batch_size=t.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0 and cfg.data.persistent_workers)
    loss_fn = dice_ce_loss()
    optimizer = build_optimizer(network.parameters(), t.optimizer, t.lr, t.momentum, t.weight_decay)
    total = t.epochs * t.iterations_per_epoch
    scheduler = build_scheduler(optimizer, total, t.warmup_epochs * t.iterations_per_epoch, t.poly_exponent)
    scaler = grad_scaler(device, amp)
    validator = Validator(network, val_volumes, make_inferer(plan.patch_size, cfg.validation.overlap,
                                                             cfg.validation.sw_batch_size), plan, amp, info)
    fg_labels = plan.foreground_labels
    ckpt_dir = run_dir / "checkpoints"
    batch_stats = cfg.validation.batch_stats and net_spec.norm == "batch"
    history: list[dict] = []
    best, best_epoch, start_epoch, start_iteration, epoch_losses = -1.0, -1, 0, 0, []
    if state is not None:
        best, best_epoch, history, start_epoch, start_iteration, epoch_losses = _restore(
            state, network, optimizer, scheduler, scaler, tracker)
        log(f"resuming at epoch {start_epoch + 1}, iteration {start_iteration}")

    def save_last(next_epoch: int, next_iteration: int, losses: list[float]) -> None:
        if not info.is_main:
            return
        save_checkpoint({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                         "next_epoch": next_epoch, "next_iteration": next_iteration, "epoch_losses": list(losses),
                         "best_val_dice_mean": best, "best_epoch": best_epoch, "history": history,
                         "mlflow_run_id": tracker.run_id, "seed": cfg.seed}, ckpt_dir / "last.pt")

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for epoch in range(start_epoch, t.epochs):
            first = start_iteration if epoch == start_epoch else 0
            losses = epoch_losses if epoch == start_epoch else []
            sampler.indices = dist.rank_indices(epoch, per_epoch, first, t.batch_size, info)
            lr = t.lr * poly_lr_factor(epoch * t.iterations_per_epoch, total, t.warmup_epochs * t.iterations_per_epoch,
                                       t.poly_exponent)  # at the epoch's start, also when resuming mid-epoch
            every = t.checkpoint_every_iterations

            def after_iteration(ls, epoch=epoch):
                if every and len(ls) % every == 0:
                    save_last(epoch, len(ls), ls)

            try:
                stats = train_epoch(model, loader, loss_fn, optimizer, scheduler, device=device, amp=amp,
                                    scaler=scaler, grad_clip=t.grad_clip, progress=progress,
                                    description=f"epoch {epoch + 1}/{t.epochs}", losses=losses,
                                    should_stop=lambda: dist.any_rank(stop["signal"] is not None, info),
                                    after_iteration=after_iteration,
                                    channels_last=t.channels_last, device_augment=device_augment)
            except torch.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                save_last(epoch, len(losses), losses)
                raise MedsegError(f"out of {device.type} memory at batch size {t.batch_size}, patch "
                                  f"{plan.patch_size}: lower train.batch_size or sampling.patch_size. A checkpoint "
                                  f"was saved; resume with: medseg train --resume {run_dir}", ckpt_dir / "last.pt") from None
            if stats["interrupted"]:
                save_last(epoch, len(losses), losses)
                raise TrainingInterrupted(
                    f"{stop['signal']} received: stopped at epoch {epoch + 1}, iteration {len(losses)}; checkpoint "
                    f"saved. Resume with: medseg train --resume {run_dir}", ckpt_dir / "last.pt")
            row = {"epoch": epoch, "train_loss": dist.mean_over_ranks(stats["train_loss"], info), "learning_rate": lr,
                   "seconds_per_iteration": stats["seconds_per_iteration"],
                   "patches_per_second": stats["patches_per_second"] * info.world_size,
                   "peak_memory_mb": peak_memory_mb(device)}
            last_epoch = epoch == t.epochs - 1
            if (epoch + 1) % cfg.validation.every_n_epochs == 0 or last_epoch:
                row.update(validator.epoch_metrics(epoch, batch_stats, progress))
                if row["val_dice_mean"] > best:
                    best, best_epoch = row["val_dice_mean"], epoch
                    if info.is_main:
                        save_checkpoint({"network": network.state_dict(), "epoch": epoch, "val_dice_mean": best},
                                        ckpt_dir / "best.pt")
            history.append(row)
            save_last(epoch + 1, 0, [])  # first the checkpoint, then the metrics (a resume logs what is missing)
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            dice_txt = " ".join(f"{n}={row[f'val_dice_{n}']:.3f}" for n in fg_labels.values()) \
                if "val_dice_mean" in row else ""
            log(f"epoch {epoch + 1}/{t.epochs} loss {row['train_loss']:.4f} lr {lr:.2e} "
                f"{row['seconds_per_iteration']:.3f} s/it {row['patches_per_second']:.1f} patches/s {dice_txt}")
    finally:
        loader = None  # ends persistent DataLoader workers before the final validation (or on error)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    # the final model (what the normalizer study compares), before the best epoch's weights replace it
    tracker.log_metrics(validator.final_model_metrics(t.epochs - 1, progress), step=t.epochs - 1)
    dist.barrier(info)  # best.pt is written by rank 0 (the run folder must be on a shared filesystem)
    network.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["network"])
    return _finish(cfg, net_spec, validator, run_dir, tracker, history, best, best_epoch, batch_stats, progress)
