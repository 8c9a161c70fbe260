"""Optimizers and the learning-rate schedule."""
from __future__ import annotations

import torch

from medseg.config import TrainConfig

_TRAIN = TrainConfig()  # defaults: the config schema's, written once there


def build_optimizer(params, name: str, lr: float, momentum: float = _TRAIN.momentum,
                    weight_decay: float = _TRAIN.weight_decay) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (nnU-Net's default) or AdamW (Loshchilov & Hutter 2019).

    Raises:
        ValueError: unknown optimizer name.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def poly_lr_factor(iteration: int, total_iterations: int, warmup_iterations: int = 0,
                   exponent: float = _TRAIN.poly_exponent) -> float:
    """The multiplier of the base learning rate at ``iteration`` (0-based).

    Linear warm-up from 1/warmup to 1 over ``warmup_iterations``, then the poly decay
    ``(1 - t / T) ** exponent`` over the remaining iterations (nnU-Net's schedule).
    """
    if warmup_iterations and iteration < warmup_iterations:
        return (iteration + 1) / warmup_iterations
    done = iteration - warmup_iterations
    span = max(1, total_iterations - warmup_iterations)
    return max(0.0, 1.0 - done / span) ** exponent


def build_scheduler(optimizer, total_iterations: int, warmup_iterations: int = 0,
                    exponent: float = _TRAIN.poly_exponent):
    """A per-iteration LambdaLR following :func:`poly_lr_factor`; call ``step()`` after each iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: poly_lr_factor(it, total_iterations, warmup_iterations, exponent))
