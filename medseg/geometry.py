"""Patch and volume geometry checked before any work: what patch a U-Net can take, and what a
resampling would make of a volume (plain Python: validating a config imports neither torch nor numpy).

Axes: a patch or volume shape is (D, H, W) voxels in the preprocessed (RAS) axis order; a spacing is
mm per axis in the same order.
"""
from __future__ import annotations

import math

from medseg.errors import ConfigError, DataError


def network_divisor(strides: list) -> tuple[int, int, int]:
    """The product of a U-Net's strides per axis: every patch dimension must be a multiple of it."""
    div = [1, 1, 1]
    for s in strides:
        s3 = (s, s, s) if isinstance(s, int) else tuple(s)
        div = [d * x for d, x in zip(div, s3)]
    return tuple(div)


def default_patch_size(fp: dict, target_spacing, divisor, max_voxels: int) -> tuple[int, int, int]:
    """The median volume shape at ``target_spacing`` (mm), rounded up to a multiple of ``divisor``
    per axis, then shrunk along its largest axis until it holds at most ``max_voxels`` voxels."""
    extent = [float(n) * float(s) / float(t) for n, s, t in zip(fp["median_shape"], fp["median_spacing"], target_spacing)]
    patch = [int(math.ceil(e / d) * d) for e, d in zip(extent, divisor)]
    while math.prod(patch) > max_voxels:
        ratios = [p / d for p, d in zip(patch, divisor)]
        i = ratios.index(max(ratios))
        if patch[i] <= divisor[i]:
            break
        patch[i] -= divisor[i]
    return tuple(patch)


def check_patch_size(patch_size, strides) -> None:
    """Raise ConfigError unless every patch dimension is a multiple of the network's downsampling."""
    div = network_divisor(strides)
    bad = [f"{p} (axis {i}) is not a multiple of {d}" for i, (p, d) in enumerate(zip(patch_size, div)) if p % d]
    if bad:
        raise ConfigError(f"patch size {tuple(patch_size)} cannot be taken by a network with strides {strides} "
                          f"(total downsampling {div}): " + "; ".join(bad) + ". Use multiples of the downsampling.",
                          "sampling.patch_size")


MAX_RESAMPLED_VOXELS = 2**28  # a volume resampled to the target spacing may hold at most this many voxels
MAX_UPSAMPLING = 64.0  # nor this many times the voxels it had: a header spacing that far off is an error


def check_resampled_size(shape, spacing, target_spacing, where) -> None:
    """Refuse a volume that resampling to ``target_spacing`` would blow up before it is resampled.

    Args:
        shape: voxels per axis; spacing: mm per axis, in the same axis order.
        target_spacing: mm per axis (any axis order: only the product counts).
        where: the file or case named in the error.

    Raises:
        DataError: more than :data:`MAX_RESAMPLED_VOXELS` voxels after resampling, or more than
            :data:`MAX_UPSAMPLING` times the voxels the volume has.
    """
    voxels = math.prod(float(n) for n in shape[:3])
    factor = math.prod(float(s) for s in spacing[:3]) / math.prod(float(t) for t in target_spacing)
    after = voxels * factor
    if after > MAX_RESAMPLED_VOXELS or factor > MAX_UPSAMPLING:
        raise DataError(f"resampling this volume ({' x '.join(str(int(n)) for n in shape[:3])} voxels of "
                        f"{' x '.join(f'{s:.3g}' for s in spacing[:3])} mm) to the model's "
                        f"{' x '.join(f'{s:.3g}' for s in target_spacing)} mm would make {after:.3g} voxels "
                        f"({factor:.3g} times as many; limits {MAX_RESAMPLED_VOXELS:.3g} voxels, "
                        f"{MAX_UPSAMPLING:g} times): check the header's voxel spacing, or use a model trained at "
                        "a spacing closer to this image's", where)
