"""Segmentation metrics: Dice and HD95 per class (MONAI DiceMetric, HausdorffDistanceMetric).

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
from monai.networks.utils import one_hot


def per_class_metrics(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, num_classes: int,
                      spacing=None, hd95: bool = True) -> dict[int, dict[str, float]]:
    """Dice and HD95 (mm) for each foreground class of one case.

    Args:
        pred, ref: integer label volumes on the same grid: (D, H, W) or an input's (X, Y, Z).
        num_classes: classes including background.
        spacing: voxel size in mm per axis (for HD95); ``None`` = 1 mm.
        hd95: also compute HD95 (slower).

    Returns:
        ``{label: {"dice": float, "hd95": float}}`` for labels 1..K-1.
    """
    p = one_hot(torch.as_tensor(np.asarray(pred), dtype=torch.long)[None, None], num_classes)
    r = one_hot(torch.as_tensor(np.asarray(ref), dtype=torch.long)[None, None], num_classes)
    dice = compute_dice(p, r, include_background=False, ignore_empty=False)[0]
    present_p = p[0, 1:].flatten(1).any(1)
    present_r = r[0, 1:].flatten(1).any(1)
    out = {}
    hd = None
    if hd95:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(p, r, include_background=False, percentile=95,
                                            spacing=None if spacing is None else list(map(float, spacing)))[0]
    for k in range(1, num_classes):
        both_empty = not present_p[k - 1] and not present_r[k - 1]
        d = 1.0 if both_empty else float(dice[k - 1])
        h = float("nan")
        if hd95:
            if both_empty:
                h = 0.0
            elif present_p[k - 1] and present_r[k - 1]:
                h = float(hd[k - 1])
        out[k] = {"dice": d, "hd95": h if math.isfinite(h) else float("nan")}
    return out


def summarize(rows: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Mean over cases of each class's metrics (NaNs ignored)."""
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        out[k] = {m: float(np.nanmean([r[k][m] for r in rows])) if any(math.isfinite(r[k][m]) for r in rows)
                  else float("nan") for m in rows[0][k]}
    return out
