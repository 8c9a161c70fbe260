"""Sliding-window inference (MONAI SlidingWindowInferer) with Gaussian importance weighting and
optional mirroring test-time augmentation."""
from __future__ import annotations

import contextlib
import functools
import itertools

import torch
from monai.inferers import SlidingWindowInferer


def make_inferer(patch_size, overlap: float = 0.5, sw_batch_size: int = 4) -> SlidingWindowInferer:
    """A MONAI SlidingWindowInferer over ``patch_size`` windows (voxels), ``overlap`` in [0, 1),
    Gaussian weighting (sigma 1/8 of the window, as nnU-Net), ``sw_batch_size`` windows per forward."""
    return SlidingWindowInferer(roi_size=tuple(patch_size), sw_batch_size=sw_batch_size, overlap=overlap,
                                mode="gaussian", sigma_scale=0.125, padding_mode="constant")


@functools.cache
def native_cpu_bf16() -> bool:
    """True where this CPU computes bf16 natively (x86 AVX512-BF16 or AMX, as PyTorch detects them);
    elsewhere bf16 autocast is emulated and slower than float32. Asked once per process."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def effective_amp(device: torch.device | str, amp: str) -> str:
    """The autocast precision that actually runs for a requested ``amp`` (``"bf16" | "fp16" | "none"``).

    On CUDA: ``amp``. On CPU: ``"bf16"`` when requested and the CPU computes bf16 natively (see
    :func:`native_cpu_bf16`; measured 1.8x faster training steps on an AVX512-BF16 EPYC), otherwise
    ``"none"`` (fp16 autocast on CPU is not faster than float32).
    """
    device = torch.device(device)
    if device.type == "cuda" or amp == "none":
        return amp
    return "bf16" if amp == "bf16" and device.type == "cpu" and native_cpu_bf16() else "none"


def autocast(device: torch.device, amp: str):
    """torch.autocast with the :func:`effective_amp` precision on ``device``; a no-op for ``"none"``."""
    amp = effective_amp(device, amp)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def predict_probabilities(network: torch.nn.Module, image: torch.Tensor, inferer: SlidingWindowInferer,
                          amp: str = "none", tta: bool = False) -> torch.Tensor:
    """Softmax probabilities of a whole volume.

    Args:
        network: in eval mode, on the device to run on.
        image: (N, C, X, Y, Z) float tensor, any spatial size (padded internally as needed).
        inferer: from :func:`make_inferer`.
        amp: ``"bf16" | "fp16" | "none"`` (see :func:`effective_amp`).
        tta: average the softmax over all 8 combinations of mirroring along the 3 spatial axes.

    Returns:
        (N, K, X, Y, Z) float32 probabilities on the network's device.
    """
    device = next(network.parameters()).device
    image = image.to(device)
    flips = [()] + [c for r in (1, 2, 3) for c in itertools.combinations((2, 3, 4), r)] if tta else [()]
    total = None
    for axes in flips:
        x = torch.flip(image, axes) if axes else image
        with autocast(device, amp):
            logits = inferer(x, network)
        prob = torch.softmax(logits.float(), dim=1)
        prob = torch.flip(prob, axes) if axes else prob
        total = prob if total is None else total + prob
    return total / len(flips)
