"""Prediction of whole NIfTI volumes in the input's own voxel grid.

The model directory's plan gives the preprocessing (reorient to RAS, resample, normalize,
optional crop). After sliding-window inference, every spatial step is inverted on the softmax
probabilities with MONAI's recorded transforms (crop -> pad, resampling -> resampling back,
reorientation -> original axis order), then the argmax is taken on the input's grid. The
output therefore has exactly the input's shape, and is written with the input's header
(affine, qform and sform with their codes).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from medseg import transforms as mt
from medseg.data.dataset import case_id
from medseg.data.nifti import load_nifti
from medseg.errors import DataError, InputWarning
from medseg.inference.sliding_window import make_inferer, predict_probabilities
from medseg.models.directory import LoadedModel
from medseg.geometry import check_resampled_size


@dataclass
class SegmentationResult:
    """One segmented volume.

    Attributes:
        case: case name (file name without extension, or the DICOM folder's name).
        labels: (X, Y, Z) uint8/uint16 labels on the input's voxel grid.
        affine: the input's voxel-to-world affine (4x4, mm, RAS+ world as nibabel defines it).
        voxel_volume_ml: volume of one voxel in ml (|det(affine[:3, :3])| / 1000).
        voxels: voxel count per label name (foreground labels).
        volumes_ml: volume per label name in ml (voxels x voxel volume).
        probabilities: (K, X, Y, Z) float32 softmax, if asked for.
        header: the input's NIfTI header (to write the labels with identical geometry).
        source_files: for a DICOM series input, its files in slice order (slice k of ``labels``'
            third axis is ``source_files[k]``); empty otherwise.
    """

    case: str
    labels: np.ndarray
    affine: np.ndarray
    voxel_volume_ml: float
    voxels: dict[str, int]
    volumes_ml: dict[str, float]
    probabilities: np.ndarray | None = None
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    source_files: tuple[str, ...] = field(default=(), repr=False)


def measure(case: str, labels: np.ndarray, affine: np.ndarray, label_names: dict[int, str], num_classes: int, *,
            probabilities: np.ndarray | None = None, header: nib.Nifti1Header | None = None,
            source_files: tuple[str, ...] = ()) -> SegmentationResult:
    """A :class:`SegmentationResult` for ``labels`` (X, Y, Z) with its voxel counts and volumes (ml)
    per foreground label name (``label_names``: value -> name)."""
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    voxels = {n: int(counts[k]) for k, n in label_names.items()}
    return SegmentationResult(case=case, labels=labels, affine=affine, voxel_volume_ml=voxel_ml, voxels=voxels,
                              volumes_ml={n: v * voxel_ml for n, v in voxels.items()}, probabilities=probabilities,
                              header=header, source_files=source_files)


def sliding_window_settings(model: LoadedModel, overlap: float | None = None,
                            sw_batch_size: int | None = None) -> tuple[float, int]:
    """``(overlap, sw_batch_size)``: the given values, else those the model directory records
    (``sliding_window``, the training run's validation settings), else the config schema's defaults."""
    from medseg.config import ValidationConfig
    stored = model.meta.get("sliding_window") if isinstance(model.meta.get("sliding_window"), dict) else {}
    default = ValidationConfig()
    if overlap is None:
        overlap = float(stored.get("overlap", default.overlap))
    if sw_batch_size is None:
        sw_batch_size = int(stored.get("sw_batch_size", default.sw_batch_size))
    return overlap, sw_batch_size


class Predictor:
    """Sliding-window prediction with a loaded model directory.

    Args:
        model: from :func:`medseg.models.directory.load_model_dir`.
        overlap: window overlap in [0, 1); ``None``: the model directory's (as validated in training).
        sw_batch_size: windows per forward pass; ``None``: the model directory's.
        tta: mirroring test-time augmentation (8 flips, averaged softmax).
        amp: ``"bf16" | "fp16" | "none"`` (CUDA only).
    """

    def __init__(self, model: LoadedModel, overlap: float | None = None, sw_batch_size: int | None = None,
                 tta: bool = False, amp: str = "bf16"):
        self.model = model
        self.plan = model.plan
        self.preprocess = mt.preprocessing(self.plan, keys=("image",))
        self.overlap, self.sw_batch_size = sliding_window_settings(model, overlap, sw_batch_size)
        self.inferer = make_inferer(self.plan.patch_size, self.overlap, self.sw_batch_size)
        self.tta = tta
        self.amp = amp

    def predict_file(self, path: str | Path, keep_probabilities: bool = False) -> SegmentationResult:
        """Predict one NIfTI volume.

        Warns:
            InputWarning: the image is blank or constant.

        Raises:
            DataError: the file is not a readable 3D NIfTI (or 4D with the model's channel count).
        """
        path = Path(path)
        img = load_nifti(path)
        shape = img.shape
        channels = self.plan.in_channels
        if not (len(shape) == 3 and channels == 1) and not (len(shape) == 4 and shape[3] == channels):
            raise DataError(f"image has shape {shape}; this model expects a 3D volume with {channels} channel(s)", path)
        check_resampled_size(shape, img.header.get_zooms()[:3], self.plan.target_spacing, path)
        try:
            data = self.preprocess({"image": str(path)})
        except Exception as e:
            raise DataError(f"cannot be read or preprocessed ({type(e).__name__}: {str(e)[:200]})", path) from None
        image = data["image"]
        if not torch.isfinite(image).all():
            raise DataError("image contains NaN/Inf voxels", path)
        if float(image.max()) == float(image.min()):
            warnings.warn(f"{path}: the image is blank or constant (every voxel has the same value after "
                          "preprocessing): its segmentation is meaningless", InputWarning, stacklevel=2)
        prob = predict_probabilities(self.model.network, image.as_tensor()[None], self.inferer, self.amp, self.tta)
        prob = MetaTensor(prob[0].cpu(), meta=image.meta, applied_operations=image.applied_operations)
        prob = self.preprocess.inverse({"image": prob})["image"]
        prob = np.asarray(prob.detach().cpu(), dtype=np.float32)
        if prob.shape[1:] != tuple(shape[:3]):
            raise RuntimeError(f"inverted prediction has shape {prob.shape[1:]}, input {shape[:3]}")
        dtype = np.uint8 if self.plan.num_classes <= 256 else np.uint16
        labels = prob.argmax(0).astype(dtype)
        return measure(case_id(path), labels, img.affine, self.plan.foreground_labels, self.plan.num_classes,
                       probabilities=prob if keep_probabilities else None, header=img.header)


def label_image(pred: SegmentationResult) -> nib.Nifti1Image:
    """A NIfTI image of ``pred.labels`` with the input's header: identical affine, qform/sform and
    codes; data type uint8/uint16 and no intensity scaling."""
    header = pred.header.copy()
    header.set_data_dtype(pred.labels.dtype)
    if len(header.get_data_shape()) != 3:
        header.set_data_shape(pred.labels.shape)
    out = nib.Nifti1Image(pred.labels, None, header=header)
    out.header.set_slope_inter(1, 0)
    return out
