"""Reproducible patch streams: the i-th patch of epoch e depends only on (seed, e, i).

Which case a patch comes from and how it is cropped and augmented are drawn from seeds derived
from (seed, epoch, position) with numpy's SeedSequence. The stream is therefore identical
whatever the number of DataLoader workers, and a run resumed at any iteration sees exactly the
patches an uninterrupted run would have seen, without saving any random-number state.
"""
from __future__ import annotations

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """A 32-bit seed derived from integer keys (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class EpochPatchStream(torch.utils.data.Dataset):
    """Index ``i = epoch * patches_per_epoch + position`` -> one augmented patch.

    Args:
        volumes: indexable preprocessed training volumes (dicts), e.g. a list or a MONAI Dataset.
        transform: the random patch sampling + augmentation (a MONAI Compose).
        patches_per_epoch: iterations per epoch x batch size.
        seed: the run's seed.
    """

    def __init__(self, volumes, transform, patches_per_epoch: int, seed: int):
        self.volumes = volumes
        self.transform = transform
        self.per_epoch = patches_per_epoch
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # not used by the sampler, which gives explicit indices
        return self.per_epoch

    def case_order(self, epoch: int) -> np.ndarray:
        """The case index of each position of ``epoch`` (uniform with replacement)."""
        if epoch not in self._orders:
            rng = np.random.default_rng(derived_seed(self.seed, epoch, 0xCA5E))
            self._orders = {epoch: rng.integers(0, len(self.volumes), self.per_epoch)}
        return self._orders[epoch]

    def __getitem__(self, index: int):
        epoch, position = divmod(int(index), self.per_epoch)
        case = int(self.case_order(epoch)[position])
        self.transform.set_random_state(seed=derived_seed(self.seed, epoch, position))
        return self.transform(dict(self.volumes[case]))

