"""Time the training step alone (forward, Dice+CE loss, backward, SGD step) on random patches.

Used to turn a wall-clock budget into an iteration count (``medseg sweep --budget-minutes``) and by
the training benchmark. No data loading is timed: see ``benchmarks/data_pipeline.py`` for that.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from medseg.precision import grad_scaler
from medseg.training.loop import Step, dice_ce_loss, training_step
from medseg.training.optim import build_optimizer

SGD_LR = 0.01  # the timed optimizer's step size (the time per iteration does not depend on it)


@dataclass(frozen=True)
class StepVariant:
    """How the timed step computes (the fast-path options of ``train``).

    Attributes:
        amp: ``"bf16" | "fp16" | "none"`` autocast (see :func:`~medseg.precision.effective_amp`).
        channels_last: network and input in channels_last_3d memory format.
        compile: time ``torch.compile(network)``.
    """

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False


def time_training_step(network: torch.nn.Module, patch_size: tuple[int, int, int], batch_size: int, *,
                       steps: int = 5, warmup: int = 2, device: str | torch.device = "cpu",
                       variant: StepVariant = StepVariant()) -> float:
    """Mean seconds per training iteration of ``network`` on random (N, C, D, H, W) patches.

    Args:
        network: a segmentation network with ``in_channels`` and ``out_channels`` attributes
            (MONAI's DynUNet, as :func:`~medseg.models.build_unet` returns).
        patch_size: (D, H, W) in voxels.
        batch_size: N.
        steps: timed iterations, after ``warmup`` untimed ones (which include torch.compile's compilation).
        variant: autocast, memory format and compilation (:class:`StepVariant`).

    Returns:
        seconds per iteration (wall time; CUDA is synchronized before reading the clock).
    """
    device = torch.device(device)
    network = network.to(device).train()
    gen = torch.Generator().manual_seed(0)
    image = torch.randn((batch_size, network.in_channels, *patch_size), generator=gen).to(device)
    label = torch.randint(0, network.out_channels, (batch_size, 1, *patch_size), generator=gen).to(device)
    if variant.channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    model = torch.compile(network) if variant.compile else network
    settings = Step(dice_ce_loss(), build_optimizer(network.parameters(), "sgd", SGD_LR), None, device, variant.amp,
                    grad_scaler(device, variant.amp))

    def step():
        training_step(model, image, label, settings)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps
