"""Deterministic k-fold splits (the same cases land in the same fold on every machine)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_write_text
from medseg.errors import DataError

SPLIT_SEED = 12345  # fixed, as nnU-Net does, so a fold means the same cases for every run


def kfold_splits(case_ids: list[str], num_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """Split case ids into ``num_folds`` folds of ``{"train": [...], "val": [...]}``.

    Case ids are sorted first, then shuffled with a fixed seed, so the split depends only on
    the set of ids, not on their order in dataset.json.

    Raises:
        DataError: fewer cases than folds.
    """
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise DataError(f"{len(ids)} cases cannot be split into {num_folds} folds; lower data.num_folds")
    order = np.random.RandomState(seed).permutation(len(ids))
    chunks = np.array_split(order, num_folds)
    splits = []
    for k in range(num_folds):
        val = sorted(ids[i] for i in chunks[k])
        train = sorted(ids[i] for j, c in enumerate(chunks) if j != k for i in c)
        splits.append({"train": train, "val": val})
    return splits


def save_split(split: dict, path: str | Path) -> None:
    """Write one fold's split as JSON."""
    atomic_write_text(path, json.dumps(split, indent=1))
