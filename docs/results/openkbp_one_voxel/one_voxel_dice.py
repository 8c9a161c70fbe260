"""What a one-voxel boundary disagreement costs in Dice on OpenKBP's 4 mm grid.

For each foreground organ of the fold's validation cases, the reference label is compared, on its
own stored grid (about 4 x 4 x 2.5 mm), with three copies of itself that differ only at the
boundary: dilated by one voxel (6-connected), eroded by one voxel, and shifted by one voxel
in-plane (mean over the four in-plane directions). Dice by medseg.evaluation (MONAI compute_dice).
This bounds nothing by itself; it says how close to the reference, in voxels, a prediction must be
to reach a given Dice on structures a few voxels thick.

    python docs/results/openkbp_one_voxel/one_voxel_dice.py [--data ../shared/data/OpenKBP_HeadNeckCT] [--fold 0]
"""
from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg.data import kfold_splits, read_dataset
from medseg.evaluation import per_class_metrics

VARIANTS = ("dilate", "erode", "shift")


def boundary_variants(mask: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The one-voxel variants of a boolean (X, Y, Z) mask; axes 0 and 1 are in-plane."""
    cross = ndimage.generate_binary_structure(3, 1)
    return {"dilate": [ndimage.binary_dilation(mask, cross)], "erode": [ndimage.binary_erosion(mask, cross)],
            "shift": [np.roll(mask, s, axis=ax) for ax in (0, 1) for s in (-1, 1)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/OpenKBP_HeadNeckCT")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--num-folds", type=int, default=5)
    args = ap.parse_args()
    spec = read_dataset(args.data)
    val = set(kfold_splits([c.case_id for c in spec.cases], args.num_folds)[args.fold]["val"])
    organs = spec.foreground_labels
    dice = {k: {v: [] for v in VARIANTS} for k in organs}
    voxels = {k: [] for k in organs}
    for case in (c for c in spec.cases if c.case_id in val):
        label = np.asarray(nib.load(case.label).dataobj).astype(np.int16)
        for k in organs:
            mask = label == k
            if not mask.any():
                continue
            voxels[k].append(int(mask.sum()))
            for name, copies in boundary_variants(mask).items():
                scores = [per_class_metrics(c.astype(np.int16), mask.astype(np.int16), 2, hd95=False)[1]["dice"]
                          for c in copies]
                dice[k][name].append(float(np.mean(scores)))
    print(f"{len(val)} validation cases of fold {args.fold}; Dice of the reference against itself changed by one voxel")
    print(f"{'organ':14s} {'median voxels':>13s} " + " ".join(f"{v:>7s}" for v in VARIANTS))
    for k, name in organs.items():
        print(f"{name:14s} {np.median(voxels[k]):13.0f} " + " ".join(f"{np.mean(dice[k][v]):7.3f}" for v in VARIANTS))
    print(f"{'mean':14s} {'':13s} " + " ".join(f"{np.mean([np.mean(dice[k][v]) for k in organs]):7.3f}"
                                             for v in VARIANTS))


if __name__ == "__main__":
    main()
