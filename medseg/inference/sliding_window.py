"""Sliding-window inference (MONAI SlidingWindowInferer) with Gaussian importance weighting and
optional mirroring test-time augmentation."""
from __future__ import annotations

import itertools

import torch
from monai.inferers import SlidingWindowInferer

from medseg.config import ValidationConfig
from medseg.precision import autocast

_VALIDATION = ValidationConfig()  # defaults: the config schema's, written once there


def make_inferer(patch_size, overlap: float = _VALIDATION.overlap,
                 sw_batch_size: int = _VALIDATION.sw_batch_size) -> SlidingWindowInferer:
    """A MONAI SlidingWindowInferer over ``patch_size`` windows (voxels), ``overlap`` in [0, 1),
    Gaussian weighting (sigma 1/8 of the window, as nnU-Net), ``sw_batch_size`` windows per forward."""
    return SlidingWindowInferer(roi_size=tuple(patch_size), sw_batch_size=sw_batch_size, overlap=overlap,
                                mode="gaussian", sigma_scale=0.125, padding_mode="constant")


@torch.no_grad()
def predict_probabilities(network: torch.nn.Module, image: torch.Tensor, inferer: SlidingWindowInferer,
                          amp: str = "none", tta: bool = False) -> torch.Tensor:
    """Softmax probabilities of a whole volume.

    Args:
        network: in eval mode, on the device to run on.
        image: (N, C, D, H, W) float tensor on the preprocessed grid, any spatial size (padded internally as needed).
        inferer: from :func:`make_inferer`.
        amp: ``"bf16" | "fp16" | "none"`` (see :func:`medseg.precision.effective_amp`).
        tta: average the softmax over all 8 combinations of mirroring along the 3 spatial axes.

    Returns:
        (N, K, D, H, W) float32 probabilities on the network's device.
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
