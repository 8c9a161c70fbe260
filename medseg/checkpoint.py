"""Atomic checkpoints: a crash at any instant leaves the previous complete file loadable."""
from __future__ import annotations

from pathlib import Path

import torch

from medseg.atomic import atomic_path


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Save a dict of tensors and plain values (no code objects) atomically with ``torch.save``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only,
    so a file carrying a pickled code payload is refused rather than executed."""
    return torch.load(path, map_location=map_location, weights_only=True)
