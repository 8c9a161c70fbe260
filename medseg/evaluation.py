"""Segmentation metrics: Dice and HD95 per class (MONAI compute_dice, compute_hausdorff_distance),
computed on label maps.

Dice = 2|P & G| / (|P| + |G|) (Dice 1945). HD95 is the 95th percentile of the symmetric surface
distances in mm (Huttenlocher et al. 1993; MONAI's implementation with voxel spacing). A class
absent from both prediction and reference has Dice 1 and HD95 0; absent from one of them,
Dice 0 and HD95 NaN (undefined).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance


def per_class_metrics(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, num_classes: int,
                      spacing=None, hd95: bool = True) -> dict[int, dict[str, float]]:
    """Dice and HD95 (mm) for each foreground class of one case, from the label maps themselves.

    No one-hot copy is made (two float32 one-hot volumes of a 512 x 512 x 300 CT with 15 labels
    would take 9.4 GB): Dice comes from MONAI's ``compute_dice`` on the label maps
    (``num_classes``), and HD95 is computed one class at a time on that class's two binary masks.

    Args:
        pred, ref: integer label volumes on the same grid: (D, H, W) or an input's (X, Y, Z); any
            integer dtype (kept, not widened).
        num_classes: classes including background.
        spacing: voxel size in mm per axis (for HD95); ``None`` = 1 mm.
        hd95: also compute HD95 (slower).

    Returns:
        ``{label: {"dice": float, "hd95": float}}`` for labels 1..K-1.

    Raises:
        ValueError: the two volumes differ in shape.
    """
    p, r = _labels(pred, num_classes), _labels(ref, num_classes)
    if p.shape != r.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and reference {tuple(r.shape)} differ in shape")
    dice = compute_dice(p[None, None], r[None, None], include_background=False, ignore_empty=False,
                        num_classes=num_classes)[0]
    present_p, present_r = _label_counts(p, num_classes) > 0, _label_counts(r, num_classes) > 0
    out = {}
    for k in range(1, num_classes):
        both_empty = not present_p[k] and not present_r[k]
        h = float("nan")
        if hd95:
            if both_empty:
                h = 0.0
            elif present_p[k] and present_r[k]:
                h = _hd95((p == k)[None, None], (r == k)[None, None], spacing)
        out[k] = {"dice": 1.0 if both_empty else float(dice[k - 1]), "hd95": h if math.isfinite(h) else float("nan")}
    return out


_TORCH_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # bincount and == take these


def _labels(volume, num_classes: int) -> torch.Tensor:
    """A label map as a tensor, sharing memory where torch computes on its dtype (uint16, as medseg's
    predictions with many labels are, becomes int16, the same size)."""
    t = torch.as_tensor(np.asarray(volume))
    if t.dtype in _TORCH_LABEL_DTYPES:
        return t
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        return t.to(torch.int64)
    return t.to(torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32)


COUNT_CHUNK = 1 << 22  # voxels per bincount call: bounds its int64 working copy to 32 MB


def _label_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Voxels per label 0..K-1, counted in chunks (``torch.bincount`` widens its input to int64)."""
    flat = labels.reshape(-1)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for start in range(0, flat.numel(), COUNT_CHUNK):
        counts += torch.bincount(flat[start:start + COUNT_CHUNK], minlength=num_classes)[:num_classes]
    return counts


def _hd95(pred_mask: torch.Tensor, ref_mask: torch.Tensor, spacing) -> float:
    """HD95 (mm) of two (1, 1, ...) binary masks (MONAI ``compute_hausdorff_distance``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_hausdorff_distance(pred_mask, ref_mask, include_background=True, percentile=95,
                                                spacing=None if spacing is None else list(map(float, spacing)))[0, 0])


def summarize(rows: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Mean over cases of each class's metrics (NaNs ignored)."""
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        out[k] = {m: float(np.nanmean([r[k][m] for r in rows])) if any(math.isfinite(r[k][m]) for r in rows)
                  else float("nan") for m in rows[0][k]}
    return out
