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
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from medseg import transforms as mt
from medseg.data.nifti import load_nifti
from medseg.errors import DataError, InputWarning
from medseg.inference.sliding_window import make_inferer, predict_probabilities
from medseg.models.directory import LoadedModel
from medseg.plan import check_resampled_size


@dataclass
class Prediction:
    """One predicted volume on the input's voxel grid.

    Attributes:
        labels: (X, Y, Z) uint8/uint16 label array, same shape as the input.
        probabilities: (K, X, Y, Z) float32 softmax, or ``None`` unless asked for.
        affine: the input's 4x4 voxel-to-world affine (mm).
        header: the input's NIfTI header (for writing with identical geometry).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header


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

    def predict_file(self, path: str | Path, keep_probabilities: bool = False) -> Prediction:
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
        return Prediction(labels, prob if keep_probabilities else None, img.affine, img.header)


def label_image(pred: Prediction) -> nib.Nifti1Image:
    """A NIfTI image of ``pred.labels`` with the input's header: identical affine, qform/sform and
    codes; data type uint8/uint16 and no intensity scaling."""
    header = pred.header.copy()
    header.set_data_dtype(pred.labels.dtype)
    if len(header.get_data_shape()) != 3:
        header.set_data_shape(pred.labels.shape)
    out = nib.Nifti1Image(pred.labels, None, header=header)
    out.header.set_slope_inter(1, 0)
    return out
