"""How much memory one training iteration of the U-Net needs, estimated before any work starts.

The estimate counts values kept per channel-voxel of each DynUNet level (channels c, voxels v at
that level): :data:`KEPT_PER_LEVEL` x :data:`BACKWARD_FACTOR` x c x v per patch, plus weights,
gradients and AdamW's moments. The constants are calibrated to stay below what PyTorch really
allocates: on this project's CPU, two float32 training iterations grew the peak RSS by 357 MB
(DynUNet 16-128, patch 40 x 56 x 40, batch 2) and 718 MB (patch 64 x 64 x 64), 1.7x and 1.2x this
estimate (``/proc`` peak RSS before and after, one thread). So the check refuses only patches that
cannot fit, never one that might.
"""
from __future__ import annotations

import sys
from math import prod

import numpy as np
import torch

KEPT_PER_LEVEL = 6  # values kept per channel-voxel of a level, at least (encoder and decoder blocks)
BACKWARD_FACTOR = 2  # activations plus their gradients at the peak of the backward pass


def training_memory_bytes(filters: list[int], strides: list, patch_size, batch_size: int, in_channels: int,
                          out_channels: int, bytes_per_value: int = 4) -> int:
    """Estimated bytes of one training iteration (forward + backward), weights and optimizer state included.

    Args:
        filters: channels per level; strides: per level (int or per-axis triple).
        patch_size: (D, H, W) voxels; batch_size: patches per iteration.
        bytes_per_value: 4 for float32 (a lower bound under bf16/fp16 autocast too, which keeps
            float32 copies).
    """
    spacing = np.ones(3)
    values = 0.0
    for c, s in zip(filters, strides):
        spacing = spacing * (np.asarray(s) if np.ndim(s) else np.full(3, s))
        values += c * prod(float(p) / float(d) for p, d in zip(patch_size, spacing))
    values += (in_channels + out_channels) * prod(patch_size)
    weights = sum(27 * a * b for a, b in zip([in_channels, *filters], filters)) * 3  # conv weights (x3: decoder)
    activations = KEPT_PER_LEVEL * BACKWARD_FACTOR * batch_size * values * bytes_per_value
    return int(activations + 4 * weights * bytes_per_value)  # weights, gradients, two AdamW moments


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes: the GPU's free memory (``torch.cuda.mem_get_info``), or
    the memory the system can give without swapping (``psutil.virtual_memory().available``, Linux's
    MemAvailable and its equivalents elsewhere); None where it cannot be read."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


MAXRSS_BYTES_PER_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: torch's peak allocated GPU memory on CUDA, else the process's peak
    resident set size (``getrusage``'s ``ru_maxrss``, whose unit is KiB on Linux and bytes on macOS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_BYTES_PER_UNIT / 2**20
