"""PNG figures logged with each run: the learning curve and validation slices with overlays."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg.keys import EPOCH, TRAIN_LOSS, VAL_DICE_MEAN  # noqa: E402


def learning_curve(history: list[dict], path: str | Path, labels: dict[int, str]) -> Path:
    """Train loss and validation Dice (per class and mean) against epoch."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [h[EPOCH] for h in history]
    a.plot(ep, [h[TRAIN_LOSS] for h in history], label="train loss (Dice+CE)")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    val = [h for h in history if VAL_DICE_MEAN in h]
    for k, name in labels.items():
        if k and val:
            b.plot([h[EPOCH] for h in val], [h.get(f"val_dice_{name}") for h in val], label=name)
    if val:
        b.plot([h[EPOCH] for h in val], [h[VAL_DICE_MEAN] for h in val], "k--", label="mean")
    b.set_xlabel("epoch"), b.set_ylabel("validation Dice"), b.set_ylim(0, 1), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def overlay_slices(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, path: str | Path,
                   title: str = "", num_slices: int = 3) -> Path:
    """Axial slices (last axis) through the reference foreground: image with the reference (left
    column) and the prediction (right column) overlaid. Arrays are (D, H, W)."""
    fg = np.nonzero(reference.reshape(-1, reference.shape[-1]).any(0))[0]
    zs = np.linspace(fg.min(), fg.max(), num_slices + 2)[1:-1].round().astype(int) if fg.size else \
        np.linspace(0, reference.shape[-1] - 1, num_slices).round().astype(int)
    k = max(int(reference.max()), int(prediction.max()), 1)
    fig, axes = plt.subplots(len(zs), 2, figsize=(6, 3 * len(zs)), squeeze=False)
    for row, z in enumerate(zs):
        for col, (lab, name) in enumerate(((reference, "reference"), (prediction, "prediction"))):
            ax = axes[row, col]
            ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
            ax.imshow(np.ma.masked_equal(lab[:, :, z].T, 0), cmap="jet", vmin=0, vmax=k, alpha=0.45, origin="lower")
            ax.set_title(f"{name}, z={z}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
