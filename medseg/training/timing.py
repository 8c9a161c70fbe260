"""Time the training step alone (forward, Dice+CE loss, backward, SGD step) on random patches.

Used to turn a wall-clock budget into an iteration count (``medseg sweep --budget-minutes``) and by
the training benchmark. No data loading is timed: see ``benchmarks/data_pipeline.py`` for that.
"""
from __future__ import annotations

import time

import torch

from medseg.precision import grad_scaler
from medseg.training.loop import Step, dice_ce_loss, training_step
from medseg.training.optim import build_optimizer


def time_training_step(network: torch.nn.Module, patch_size: tuple[int, int, int], batch_size: int, in_channels: int,
                       out_channels: int, *, steps: int = 5, warmup: int = 2, device: str | torch.device = "cpu",
                       lr: float = 0.01, amp: str = "none", channels_last: bool = False,
                       compile: bool = False) -> float:
    """Mean seconds per training iteration of ``network`` on random (N, C, D, H, W) patches.

    Args:
        patch_size: (D, H, W) in voxels.
        batch_size: N.
        steps: timed iterations, after ``warmup`` untimed ones (which include torch.compile's compilation).
        amp: ``"bf16" | "fp16" | "none"`` autocast (see :func:`~medseg.precision.effective_amp`).
        channels_last: network and input in channels_last_3d memory format.
        compile: time ``torch.compile(network)``.

    Returns:
        seconds per iteration (wall time; CUDA is synchronized before reading the clock).
    """
    device = torch.device(device)
    network = network.to(device).train()
    gen = torch.Generator().manual_seed(0)
    image = torch.randn((batch_size, in_channels, *patch_size), generator=gen).to(device)
    label = torch.randint(0, out_channels, (batch_size, 1, *patch_size), generator=gen).to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    model = torch.compile(network) if compile else network
    settings = Step(dice_ce_loss(), build_optimizer(network.parameters(), "sgd", lr), None, device, amp,
                    grad_scaler(device, amp))

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
