import math

import numpy as np

from medseg.evaluation import per_class_metrics, summarize


def test_dice_and_hd95_on_known_shapes():
    ref = np.zeros((20, 20, 20), np.int64)
    ref[5:15, 5:15, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[5:15, 5:15, 7:17] = 1  # shifted 2 voxels along z
    m = per_class_metrics(pred, ref, 3, spacing=(1.0, 1.0, 2.5))
    assert math.isclose(m[1]["dice"], 2 * 800 / 2000, rel_tol=1e-6)
    assert math.isclose(m[1]["hd95"], 5.0, abs_tol=1e-6)  # 2 voxels x 2.5 mm
    assert m[2]["dice"] == 1.0 and m[2]["hd95"] == 0.0  # absent from both
    only_ref = per_class_metrics(np.zeros_like(ref), ref, 2)
    assert only_ref[1]["dice"] == 0.0 and math.isnan(only_ref[1]["hd95"])


def test_summarize_ignores_nan():
    rows = [{1: {"dice": 0.5, "hd95": float("nan")}}, {1: {"dice": 1.0, "hd95": 2.0}}]
    assert summarize(rows) == {1: {"dice": 0.75, "hd95": 2.0}}


def test_label_map_metrics_equal_monais_one_hot_metrics():
    """Dice and HD95 from the label maps equal MONAI's on one-hot volumes (the former way), for
    random multi-label volumes with an absent class and a class missing from one side."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, (18, 16, 14)).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.8, ref, rng.integers(0, 4, ref.shape)).astype(np.uint8)
    pred[pred == 3] = 0  # class 3 only in the reference; class 4 in neither
    m = per_class_metrics(pred, ref, 5, spacing=(1.0, 0.8, 2.0))
    p = one_hot(torch.as_tensor(pred, dtype=torch.long)[None, None], 5)
    r = one_hot(torch.as_tensor(ref, dtype=torch.long)[None, None], 5)
    dice = compute_dice(p, r, include_background=False, ignore_empty=False)[0]
    hd = compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=[1.0, 0.8, 2.0])[0]
    for k in (1, 2):
        assert m[k]["dice"] == float(dice[k - 1]) and m[k]["hd95"] == float(hd[k - 1])
    assert m[3]["dice"] == 0.0 and math.isnan(m[3]["hd95"])
    assert m[4] == {"dice": 1.0, "hd95": 0.0}
