"""A whole training run: dataset -> fingerprint -> plan -> data -> model -> fit -> validation ->
model directory, tracked in MLflow. This is what ``medseg train`` calls."""
from __future__ import annotations

import json
import math
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.data import DataLoader, Dataset, PersistentDataset
from monai.losses import DiceCELoss
from monai.transforms import Compose, EnsureTyped
from monai.utils import set_determinism

from medseg import transforms as mt
from medseg.config import Config, config_to_yaml, flatten
from medseg.data import kfold_splits, load_or_compute_fingerprint, read_dataset
from medseg.data.folds import save_split
from medseg.inference.sliding_window import make_inferer
from medseg.models import NetworkSpec, build_unet
from medseg.models.directory import save_model_dir
from medseg.plan import make_plan
from medseg.plots import learning_curve, overlay_slices
from medseg.progress import ProgressFn, silent
from medseg.tracking import Tracker, resolve_tracking_uri
from medseg.training.checkpoint import load_checkpoint, save_checkpoint
from medseg.training.loop import train_epoch, validate
from medseg.training.optim import build_optimizer, build_scheduler

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
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from medseg.errors import ConfigError
        raise ConfigError("train.device=cuda but no CUDA GPU is available; use auto or cpu", "train.device")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on CUDA, else the process's peak resident set size (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "dataset"


def run_training(cfg: Config, *, progress: ProgressFn = silent, log: Log = lambda s: None) -> TrainingResult:
    """Train and validate one model as configured by ``cfg`` (validated; ``cfg.data.root`` set).

    Raises:
        DataError: bad dataset (checked before any training).
        ConfigError: patch size vs network, unknown norm, group/channel mismatch.
        MedsegError: the MLflow store cannot be reached.
    """
    from medseg.errors import ConfigError
    if cfg.data.root is None:
        raise ConfigError("no dataset: set data.root in the config or pass --data DIR", "data.root")
    set_determinism(seed=cfg.seed, use_deterministic_algorithms=cfg.train.deterministic)
    device = select_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic

    # --- data checks, fingerprint, plan: everything that can fail on user input, before any work
    spec = read_dataset(cfg.data.root)
    fingerprint, _ = load_or_compute_fingerprint(spec, cfg.data.cache_dir, progress)
    m = cfg.model
    net_spec = NetworkSpec(in_channels=len(spec.modality), out_channels=spec.num_classes, filters=list(m.filters),
                           strides=[list(s) if isinstance(s, tuple) else s for s in m.strides],
                           kernel_size=m.kernel_size, norm=m.norm, num_groups=m.num_groups,
                           deep_supervision=m.deep_supervision, res_block=m.res_block)
    network = build_unet(net_spec).to(device)
    plan = make_plan(fingerprint, target_spacing=cfg.preprocess.target_spacing, patch_size=cfg.sampling.patch_size,
                     strides=net_spec.strides, image_interpolation=cfg.preprocess.image_interpolation,
                     crop_foreground=cfg.preprocess.crop_foreground, max_patch_voxels=cfg.sampling.max_patch_voxels)
    split = kfold_splits([c.case_id for c in spec.cases], cfg.data.num_folds)[cfg.data.fold]
    by_id = {c.case_id: c.as_dict() for c in spec.cases}
    train_items = [by_id[i] for i in split["train"]]
    val_items = [by_id[i] for i in split["val"]]

    tags = {"norm": m.norm, "batch_size": cfg.train.batch_size, "fold": cfg.data.fold, "dataset": spec.name}
    run_name = f"{_slug(spec.name)}_{m.norm}_bs{cfg.train.batch_size}_fold{cfg.data.fold}_{time.strftime('%Y%m%d-%H%M%S')}"
    tracker = Tracker(resolve_tracking_uri(cfg.tracking.tracking_uri), cfg.tracking.experiment, run_name, tags)
    run_dir = Path(cfg.output_dir) / run_name
    run_dir.mkdir(parents=True, exist_ok=False)
    log(f"run {run_name}: {len(train_items)} training / {len(val_items)} validation cases, patch {plan.patch_size}, "
        f"spacing {tuple(round(s, 3) for s in plan.target_spacing)} mm, norm {m.norm}, device {device}")
    log(f"MLflow run {tracker.run_id} in {tracker.uri}")
    try:
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
        save_split(split, run_dir / "split.json")
        (run_dir / "fingerprint.json").write_text(json.dumps(fingerprint, indent=1))
        (run_dir / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1))
        tracker.log_params({**flatten(cfg), **{f"plan.{k}": json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
                               for k, v in plan.to_dict().items() if k != "extra"},
                            "data.num_train_cases": len(train_items), "data.num_val_cases": len(val_items)})
        for name in ("config.yaml", "split.json", "fingerprint.json", "plan.json"):
            tracker.log_artifact(run_dir / name)
        result = _fit(cfg, plan, net_spec, network, device, train_items, val_items, run_dir, tracker, progress, log)
    except BaseException as e:
        tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    tracker.end("FINISHED")
    return result


def _datasets(cfg: Config, plan, train_items, val_items, progress):
    pre = mt.preprocessing(plan)
    prep = Compose([mt.patch_preparation(plan), EnsureTyped(keys=("image", "label"), track_meta=False)])
    a = cfg.augment
    rand = mt.patch_sampling_and_augmentation(
        plan, foreground_oversampling=cfg.sampling.foreground_oversampling, flip=a.flip, rotate_scale=a.rotate_scale,
        rotation_degrees=a.rotation_degrees, scale_range=a.scale_range, gamma=a.gamma, noise=a.noise,
        brightness_contrast=a.brightness_contrast, probability=a.probability)
    val = [pre(it) for it in progress(val_items, "Caching validation volumes", len(val_items))]
    if cfg.data.cache == "memory":
        cached = [prep(pre(it)) for it in progress(train_items, "Caching training volumes", len(train_items))]
        train_ds = Dataset(cached, transform=rand)
    elif cfg.data.cache == "disk":
        train_ds = PersistentDataset(train_items, transform=Compose([pre, prep, rand]),
                                     cache_dir=Path(cfg.data.cache_dir) / "preprocessed")
    else:
        train_ds = Dataset(train_items, transform=Compose([pre, prep, rand]))
    rand.set_random_state(seed=cfg.seed)
    return train_ds, val


def _fit(cfg: Config, plan, net_spec, network, device, train_items, val_items, run_dir: Path, tracker: Tracker,
         progress: ProgressFn, log: Log) -> TrainingResult:
    t = cfg.train
    train_ds, val_volumes = _datasets(cfg, plan, train_items, val_items, progress)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = torch.utils.data.RandomSampler(train_ds, replacement=True,
                                             num_samples=t.iterations_per_epoch * t.batch_size, generator=generator)
    loader = DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0, pin_memory=device.type == "cuda", drop_last=True)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    optimizer = build_optimizer(network.parameters(), t.optimizer, t.lr, t.momentum, t.weight_decay)
    total = t.epochs * t.iterations_per_epoch
    scheduler = build_scheduler(optimizer, total, t.warmup_epochs * t.iterations_per_epoch, t.poly_exponent)
    amp = t.amp if device.type == "cuda" else "none"
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    inferer = make_inferer(plan.patch_size, cfg.validation.overlap, cfg.validation.sw_batch_size)
    fg_labels = {k: v for k, v in plan.labels.items() if k}
    ckpt_dir = run_dir / "checkpoints"
    history: list[dict] = []
    best, best_epoch = -1.0, -1
    for epoch in range(t.epochs):
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(network, loader, loss_fn, optimizer, scheduler, device=device, amp=amp, scaler=scaler,
                            grad_clip=t.grad_clip, progress=progress, description=f"epoch {epoch + 1}/{t.epochs}")
        row = {"epoch": epoch, "train_loss": stats["train_loss"], "learning_rate": lr,
               "seconds_per_iteration": stats["seconds_per_iteration"],
               "patches_per_second": stats["patches_per_second"], "peak_memory_mb": peak_memory_mb(device)}
        last_epoch = epoch == t.epochs - 1
        if (epoch + 1) % cfg.validation.every_n_epochs == 0 or last_epoch:
            v0 = time.perf_counter()
            val = validate(network, val_volumes, inferer, num_classes=plan.num_classes, spacing=plan.target_spacing,
                           amp=amp, progress=progress)
            for k, name in fg_labels.items():
                row[f"val_dice_{name}"] = val["per_class"][k]["dice"]
            row["val_dice_mean"] = float(np.mean([val["per_class"][k]["dice"] for k in fg_labels]))
            row["validation_seconds"] = time.perf_counter() - v0
            if row["val_dice_mean"] > best:
                best, best_epoch = row["val_dice_mean"], epoch
                save_checkpoint({"network": network.state_dict(), "epoch": epoch, "val_dice_mean": best},
                                ckpt_dir / "best.pt")
        save_checkpoint({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch, "best_val_dice_mean": best,
                         "best_epoch": best_epoch}, ckpt_dir / "last.pt")
        history.append(row)
        tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        dice_txt = " ".join(f"{n}={row[f'val_dice_{n}']:.3f}" for n in fg_labels.values()) if "val_dice_mean" in row else ""
        log(f"epoch {epoch + 1}/{t.epochs} loss {row['train_loss']:.4f} lr {lr:.2e} "
            f"{row['seconds_per_iteration']:.3f} s/it {row['patches_per_second']:.1f} patches/s {dice_txt}")

    # --- final: best model, HD95, plots, model directory
    network.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["network"])
    final = validate(network, val_volumes, inferer, num_classes=plan.num_classes, spacing=plan.target_spacing,
                     amp=amp, hd95=cfg.validation.hd95, progress=progress, keep_first=True)
    val_dice = {name: final["per_class"][k]["dice"] for k, name in fg_labels.items()}
    val_hd95 = {name: final["per_class"][k]["hd95"] for k, name in fg_labels.items()}
    summary = {f"best_val_dice_{n}": d for n, d in val_dice.items()}
    summary.update({f"best_val_hd95_{n}": h for n, h in val_hd95.items()})
    summary["best_val_dice_mean"] = float(np.mean(list(val_dice.values())))
    hd = [h for h in val_hd95.values() if math.isfinite(h)]
    if hd:
        summary["best_val_hd95_mean"] = float(np.mean(hd))
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
    model_dir = save_model_dir(run_dir / "model", network, plan, net_spec, extra={
        "mlflow_run_id": tracker.run_id, "best_epoch": best_epoch, "validation": summary,
        "sliding_window": {"overlap": cfg.validation.overlap, "sw_batch_size": cfg.validation.sw_batch_size}})
    tracker.log_artifacts(model_dir, "model")
    return TrainingResult(run_id=tracker.run_id, run_dir=run_dir, model_dir=model_dir, best_dice=best,
                          best_epoch=best_epoch, val_dice=val_dice, val_hd95=val_hd95, history=history)
