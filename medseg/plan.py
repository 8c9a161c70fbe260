"""The plan: the resolved preprocessing and patch geometry of one run.

A plan joins the dataset fingerprint with the config (explicit values win over derived
defaults). It is plain data, saved in the model directory, so inference repeats exactly the
preprocessing the model was trained with, without the training config.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from medseg.config import PreprocessConfig, SamplingConfig
from medseg.geometry import check_patch_size, check_resampled_size, default_patch_size, network_divisor


@dataclass(frozen=True)
class Plan:
    """Preprocessing and sampling geometry.

    Attributes:
        modality: per input channel, e.g. ``["MRI"]``.
        labels: label value -> name (0 = background).
        target_spacing: mm along R, A, S after reorientation to RAS.
        patch_size: voxels (RAS order), a multiple of the network's downsampling.
        image_interpolation: ``"linear"`` or ``"spline"`` (order 3) for images; labels are nearest.
        crop_foreground: crop to the nonzero bounding box of the image.
        ct_clip: (low, high) foreground percentiles 0.5/99.5 for CT; ``None`` for MRI.
        ct_mean, ct_std: dataset foreground mean/std for CT z-scoring.
    """

    modality: list[str]
    labels: dict[int, str]
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    image_interpolation: str = "linear"
    crop_foreground: bool = False
    ct_clip: tuple[float, float] | None = None
    ct_mean: float | None = None
    ct_std: float | None = None
    dataset: str = ""

    @property
    def num_classes(self) -> int:
        """Network output channels: classes including background."""
        return max(self.labels) + 1

    @property
    def foreground_labels(self) -> dict[int, str]:
        """Label value -> name without background (0)."""
        return {k: v for k, v in self.labels.items() if k}

    @property
    def in_channels(self) -> int:
        """Network input channels: one per modality."""
        return len(self.modality)

    def to_dict(self) -> dict:
        """JSON-serialisable form (label keys as strings)."""
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d.pop("extra", None)  # an always-empty field of model directories written before 2026-11-29
        d["labels"] = {int(k): v for k, v in d["labels"].items()}
        d["target_spacing"] = tuple(d["target_spacing"])
        d["patch_size"] = tuple(d["patch_size"])
        if d.get("ct_clip") is not None:
            d["ct_clip"] = tuple(d["ct_clip"])
        return cls(**d)


_PRE, _SAMPLING = PreprocessConfig(), SamplingConfig()  # defaults: the config schema's, written once there


def make_plan(fingerprint: dict, *, target_spacing=None, patch_size=None, strides,
              image_interpolation=_PRE.image_interpolation, crop_foreground=_PRE.crop_foreground,
              max_patch_voxels=_SAMPLING.max_patch_voxels) -> Plan:
    """Resolve the plan from a fingerprint (see :mod:`medseg.data.fingerprint`) and explicit settings.

    ``target_spacing`` defaults to the median spacing; ``patch_size`` to the median shape at that
    spacing rounded up to the network's downsampling (capped at ``max_patch_voxels``).

    Raises:
        ConfigError: the patch size is not a multiple of the network's downsampling.
        DataError: a case would become too large when resampled (:func:`check_resampled_size`).
    """
    spacing = tuple(float(s) for s in (target_spacing or fingerprint["median_spacing"]))
    for case, geometry in fingerprint.get("cases", {}).items():
        check_resampled_size(geometry["shape"], geometry["spacing"], spacing, f"case {case}")
    if patch_size is None:
        patch_size = default_patch_size(fingerprint, spacing, network_divisor(strides), max_patch_voxels)
    check_patch_size(patch_size, strides)
    modality = list(fingerprint["modality"])
    fi = fingerprint["foreground_intensity"]
    is_ct = modality[0].upper() == "CT"
    return Plan(
        modality=modality,
        labels={int(k): v for k, v in fingerprint["labels"].items()},
        target_spacing=spacing,
        patch_size=tuple(int(p) for p in patch_size),
        image_interpolation=image_interpolation,
        crop_foreground=crop_foreground,
        ct_clip=(fi["percentile_00_5"], fi["percentile_99_5"]) if is_ct else None,
        ct_mean=fi["mean"] if is_ct else None,
        ct_std=max(fi["std"], 1e-8) if is_ct else None,
        dataset=fingerprint.get("dataset", ""),
    )
