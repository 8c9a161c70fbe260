"""The inner training loop: the loss, one optimization step, one epoch over the patch loader.

Axes: (N, C, D, H, W) for a batch of patches (see medseg/training/validation.py for whole volumes)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.utils import convert_to_tensor

from medseg.errors import MedsegError
from medseg.precision import autocast
from medseg.progress import ProgressFn, silent


class TrainingDiverged(MedsegError):
    """The training loss became NaN or infinite."""


def dice_ce_loss() -> DiceCELoss:
    """medseg's training loss: MONAI DiceCELoss (softmax, one-hot labels, Dice over the batch)."""
    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


def deep_supervision_loss(loss_fn, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` on (N, K, D, H, W) logits, or the weighted sum over heads of a deep-supervision
    output (N, S, K, D, H, W) (S heads) with weights 1, 1/2, 1/4... normalized to 1 (nnU-Net's scheme)."""
    if output.dim() == target.dim():
        return loss_fn(output, target)
    heads = output.unbind(1)
    weights = [0.5**i for i in range(len(heads))]
    return sum(w * loss_fn(h, target) for w, h in zip(weights, heads)) / sum(weights)


@dataclass
class Step:
    """How one optimization step runs.

    Attributes:
        loss_fn: the loss (:func:`dice_ce_loss`). optimizer, scheduler: the optimizer and its
            per-iteration learning-rate schedule (``scheduler`` may be None for a single step).
        device: where the batch and the network are. amp: ``"bf16" | "fp16" | "none"`` (see
            :func:`~medseg.precision.effective_amp`). scaler: fp16's loss scaler, else None.
        grad_clip: gradient-norm clipping threshold, or None.
        channels_last: feed images in channels_last_3d memory format (the network should be too).
        device_augment: a :class:`~medseg.training.patch_stream.DeviceAugmentation` applied to each
            batch on ``device`` (the batch then carries its stream indices under ``"index"``), or None.
    """

    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    amp: str = "none"
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float | None = None
    channels_last: bool = False
    device_augment: Callable | None = None


def training_step(network, image: torch.Tensor, label: torch.Tensor, step: Step) -> torch.Tensor:
    """One optimization step on a batch already on ``step.device``: forward under autocast, Dice+CE
    in float32 (over the deep-supervision heads if any), backward (scaled when ``step.scaler`` is
    given, for fp16), optional gradient-norm clipping, optimizer step.

    Args:
        image: (N, C, D, H, W); label: (N, 1, D, H, W) class indices.

    Returns:
        the loss (0-dim float32 tensor; ``.item()`` reads it).

    Raises:
        TrainingDiverged: the loss is NaN or infinite (a :class:`~medseg.errors.MedsegError`).
    """
    optimizer, scaler = step.optimizer, step.scaler
    optimizer.zero_grad(set_to_none=True)
    with autocast(step.device, step.amp):
        output = network(image)
    loss = deep_supervision_loss(step.loss_fn, output.float(), label)  # softmax, Dice and CE in float32
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"the training loss became {loss.item()} at learning rate "
                               f"{optimizer.param_groups[0]['lr']:.3g}. Lower train.lr (e.g. by 3x), keep "
                               "train.grad_clip set, or use train.amp=none if fp16 overflowed; check the images for "
                               "NaN/Inf (medseg fingerprint). The last checkpoint is from the previous epoch.", "train.lr")
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if step.grad_clip:
        torch.nn.utils.clip_grad_norm_(network.parameters(), step.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss


def train_epoch(network, loader, step: Step, *, progress: ProgressFn = silent, description: str = "train",
                losses: list[float] | None = None, should_stop=lambda: False,
                after_iteration=lambda losses: None) -> dict[str, float]:
    """One pass over ``loader`` (batches of ``image`` (N, C, *patch) and ``label`` (N, 1, *patch)).

    ``network`` may be DDP-wrapped and/or ``torch.compile``-d; it receives plain tensors.

    The learning-rate scheduler steps after every iteration.

    Args:
        step: how each iteration's optimization step runs (:class:`Step`).
        losses: losses of iterations of this epoch already done (when resuming mid-epoch); appended to.
        should_stop: checked after every iteration; True ends the epoch early (``interrupted``).
        after_iteration: called with the epoch's losses so far after every iteration.

    Returns:
        ``train_loss`` (mean over the epoch's iterations), ``seconds_per_iteration`` (wall time
        including data loading), ``patches_per_second``, ``iterations`` (done in this call),
        ``interrupted`` (bool).

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    network.train()
    losses = [] if losses is None else losses
    done, patches, interrupted = 0, 0, False
    start = time.perf_counter()
    for batch in progress(loader, description, len(loader)):
        image = batch["image"].to(step.device, non_blocking=True)
        label = batch["label"].to(step.device, non_blocking=True)
        if step.device_augment is not None:
            image, label = step.device_augment(image, label, batch["index"].tolist())
        # MONAI MetaTensor -> plain tensor: no per-op metadata work, nothing for torch.compile to trace through
        image, label = convert_to_tensor(image, track_meta=False), convert_to_tensor(label, track_meta=False)
        if step.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        loss = training_step(network, image, label, step)
        step.scheduler.step()
        losses.append(loss.item())
        done += 1
        patches += image.shape[0]
        after_iteration(losses)
        if should_stop():
            interrupted = True
            break
    seconds = time.perf_counter() - start
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"),
            "seconds_per_iteration": seconds / max(1, done), "patches_per_second": patches / max(seconds, 1e-9),
            "iterations": done, "interrupted": interrupted}
