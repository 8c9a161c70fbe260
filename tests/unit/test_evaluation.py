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
