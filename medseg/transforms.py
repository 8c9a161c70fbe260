"""MONAI transform chains built from a :class:`~medseg.plan.Plan`.

* :func:`preprocessing` - deterministic, cached: load (nibabel), channel first, reorient to RAS,
  resample to the target spacing, optional crop to the nonzero box, normalize intensities by modality.
* :func:`patch_preparation` - deterministic, cached: pad to the patch size, index voxels per class.
* :func:`patch_sampling_and_augmentation` - random, per iteration: foreground-oversampled
  patch crop and on-the-fly augmentation.

Intensity normalization follows nnU-Net (Isensee et al., Nature Methods 2021): MRI is z-scored
per image over nonzero voxels; CT is clipped to the dataset's foreground 0.5/99.5 percentiles
and z-scored with the dataset's foreground mean and standard deviation.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from monai import transforms as T

from medseg.config import AugmentConfig, SamplingConfig
from medseg.plan import Plan

_AUG, _SAMPLING = AugmentConfig(), SamplingConfig()  # defaults: the config schema's, written once there

INDICES_KEY = "label_cls_indices"
CROP_STEPS = 2  # the leading steps of patch_sampling_and_augmentation that crop; the rest augment


def _nifti_loader(keys) -> T.LoadImaged:
    """MONAI's LoadImaged with nibabel. MONAI also registers its other readers; with pydicom installed
    (highdicom needs it) its GPU DICOM decoder plugin says at every construction that nvImageCodec
    is missing. medseg reads DICOM with SimpleITK, so that notice is silenced here."""
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            return T.LoadImaged(keys=keys, reader="NibabelReader", image_only=True, ensure_channel_first=True)
    finally:
        plugin_log.setLevel(level)


def preprocessing(plan: Plan, keys: tuple[str, ...] = ("image", "label")) -> T.Compose:
    """Deterministic preprocessing of a ``{"image": path, "label": path}`` dict.

    Output: ``image`` float32 MetaTensor (C, D, H, W) in RAS at ``plan.target_spacing`` mm;
    ``label`` (1, D, H, W) on the same grid (nearest-neighbour). Every step is invertible
    (MONAI records it), which inference uses to map predictions back to the input grid.
    """
    has_label = "label" in keys
    image_mode = 3 if plan.image_interpolation == "spline" else "bilinear"
    modes = (image_mode, "nearest") if has_label else (image_mode,)
    chain = [
        _nifti_loader(keys),
        T.Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys=keys, pixdim=plan.target_spacing, mode=modes),
    ]
    if plan.crop_foreground:  # on raw intensities: > 0 is the body for CT (HU + 1000) and MRI
        chain.append(T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True, margin=0))
    chain += intensity_normalization(plan)
    chain.append(T.EnsureTyped(keys="image", dtype=np.float32, track_meta=True))
    return T.Compose(chain)


def intensity_normalization(plan: Plan) -> list:
    """The modality's intensity normalization (see module docstring)."""
    if plan.ct_clip is not None:
        lo, hi = plan.ct_clip
        return [
            T.ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True),
            T.NormalizeIntensityd(keys="image", subtrahend=plan.ct_mean, divisor=plan.ct_std),
        ]
    return [T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]


def patch_preparation(plan: Plan) -> T.Compose:
    """Pad volumes smaller than the patch (zeros) and index voxels by class for fast crops."""
    return T.Compose([
        T.SpatialPadd(keys=("image", "label"), spatial_size=plan.patch_size),
        T.ClassesToIndicesd(keys="label", num_classes=plan.num_classes, indices_postfix="_cls_indices"),
    ])


def class_ratios(num_classes: int, foreground_oversampling: float) -> list[float]:
    """Crop-centre ratios per class: background gets ``1 - p``, each foreground class ``p / (K - 1)``."""
    fg = num_classes - 1
    return [1.0 - foreground_oversampling] + [foreground_oversampling / fg] * fg


def patch_sampling_and_augmentation(plan: Plan, *,
                                    foreground_oversampling: float = _SAMPLING.foreground_oversampling,
                                    augment: AugmentConfig = _AUG) -> T.Compose:
    """Random patch crop (MONAI RandCropByLabelClassesd, classes balanced) then augmentation.

    Args:
        foreground_oversampling: share of crop centres on a foreground voxel (see :func:`class_ratios`).
        augment: which transforms run and how strongly (the ``augment`` config section; its
            ``on_device`` is for the caller: see ``training/patch_stream.py``).

    Output per sample: ``image`` (C, *patch_size) float32 and ``label`` (1, *patch_size).
    """
    keys = ("image", "label")
    chain: list = [
        T.RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=plan.patch_size,
                                  ratios=class_ratios(plan.num_classes, foreground_oversampling),
                                  num_classes=plan.num_classes, num_samples=1, indices_key=INDICES_KEY, warn=False),
        T.DeleteItemsd(keys=INDICES_KEY),
    ]
    assert len(chain) == CROP_STEPS  # DeviceAugmentation runs what follows on the training device
    a = augment
    if a.rotate_scale and (a.rotation_degrees > 0 or a.scale_range > 0):
        r = math.radians(a.rotation_degrees)
        chain.append(T.RandAffined(keys=keys, prob=a.probability, rotate_range=(r, r, r), scale_range=a.scale_range,
                                   mode=("bilinear", "nearest"), padding_mode="zeros"))
    if a.flip:
        chain += [T.RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    if a.noise:
        chain.append(T.RandGaussianNoised(keys="image", prob=a.probability / 2, std=0.1))
    if a.brightness_contrast:
        chain.append(T.RandScaleIntensityd(keys="image", prob=a.probability, factors=0.25))
        chain.append(T.RandScaleIntensityFixedMeand(keys="image", prob=a.probability, factors=0.25, preserve_range=True))
    if a.gamma:
        chain.append(T.RandAdjustContrastd(keys="image", prob=a.probability, gamma=(0.7, 1.5), retain_stats=True))
    return T.Compose(chain)
