"""Reproducible patch streams: the i-th patch of a run depends only on (seed, i).

Which case a patch comes from and how it is cropped and augmented are drawn from seeds derived
from (seed, i) with numpy's SeedSequence, where i counts the run's training patches from 0.
The stream is therefore identical whatever the number of DataLoader workers, and a run resumed at
any iteration sees exactly the patches an uninterrupted run would have seen, without saving any
random-number state. It does not depend on the batch size or on how iterations are split into
epochs either: two runs with one seed see the same patches in the same order (patch i is the
(i mod B)-th example of iteration floor(i / B) at batch size B). This is what pairs the children
of the normalizer study (medseg/study/sweep.py).
"""
import copy

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """A 32-bit seed derived from integer keys (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


CASE_BLOCK = 1024  # the case of each patch is drawn in blocks of this many stream indices


class EpochPatchStream(torch.utils.data.Dataset):
    """Stream index ``i`` (the run's i-th training patch) -> one augmented patch.

    Epoch ``e`` uses indices ``e * patches_per_epoch`` to ``(e + 1) * patches_per_epoch - 1``;
    what index ``i`` yields depends only on ``(seed, i)``.

    Args:
        volumes: indexable preprocessed training volumes (dicts), e.g. a list or a MONAI Dataset.
        transform: the random patch sampling + augmentation (a MONAI Compose).
        patches_per_epoch: iterations per epoch x batch size (x world size under DDP).
        seed: the run's seed.
        worker_steps: run only the first ``worker_steps`` transforms of ``transform`` here (the patch
            crop) and leave the rest to :class:`DeviceAugmentation`; each patch then carries its
            stream index under ``"index"``. ``None`` runs the whole transform.

    ``stream[i]`` is what the transform returns: a list with one dict (``image`` (C, D, H, W),
    ``label`` (1, D, H, W)) for MONAI's label-class crop.
    """

    def __init__(self, volumes, transform, patches_per_epoch: int, seed: int, worker_steps: int | None = None):
        self.volumes = volumes
        self.transform = transform
        self.per_epoch = patches_per_epoch
        self.seed = seed
        self.worker_steps = worker_steps
        self._blocks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # not used by the sampler, which gives explicit indices
        return self.per_epoch

    def case_index(self, index: int) -> int:
        """The training case of stream index ``index`` (uniform with replacement)."""
        block, offset = divmod(int(index), CASE_BLOCK)
        if block not in self._blocks:
            rng = np.random.default_rng(derived_seed(self.seed, block, 0xCA5E))
            self._blocks = {block: rng.integers(0, len(self.volumes), CASE_BLOCK)}
        return int(self._blocks[block][offset])

    def patch_seed(self, index: int) -> int:
        """The seed of the random transforms (crop centre, augmentation) of stream index ``index``."""
        return derived_seed(self.seed, int(index))

    def __getitem__(self, index: int):
        case = self.case_index(index)
        self.transform.set_random_state(seed=self.patch_seed(index))
        if self.worker_steps is None:
            return self.transform(dict(self.volumes[case]))
        data = self.transform(dict(self.volumes[case]), end=self.worker_steps)
        for d in data if isinstance(data, list) else [data]:
            d["index"] = int(index)
        return data


class DeviceAugmentation:
    """The augmentation part of a patch stream's transform (all steps after the crop), applied to a
    batch on the training device, for GPUs whose CPU cores cannot keep up with the augmentation.

    Each patch gets the same random draws as in :class:`EpochPatchStream` without ``worker_steps``
    (MONAI's Compose gives every transform a seed derived from the patch seed, in order), so the
    patches are the same as on the CPU path up to floating-point differences between devices. The
    crop must yield one sample per index (``num_samples=1``). Patches are augmented one at a time;
    the random draws stay on the CPU (numpy), as do MONAI's affine grid and the Gaussian noise array,
    which are copied to the device: what moves to the device is the resampling and the voxel-wise
    arithmetic.

    Call with image (N, C, D, H, W) and label (N, 1, D, H, W) tensors on the device and the (N,)
    stream indices of the batch; returns the augmented (image, label), stacked, on the same device
    (the label as float after a spatial transform).

    Raises:
        ValueError: ``stream`` was built without ``worker_steps``, or its crop yields more than one
            sample per index.
    """

    def __init__(self, stream: EpochPatchStream):
        if stream.worker_steps is None:
            raise ValueError("DeviceAugmentation needs a stream built with worker_steps")
        if any(getattr(t, "num_samples", 1) != 1 for t in stream.transform.transforms[:stream.worker_steps]):
            raise ValueError("DeviceAugmentation needs one patch per stream index (crop num_samples=1)")
        self.stream = stream
        self.transform = copy.deepcopy(stream.transform)  # its own random states

    def __call__(self, image: torch.Tensor, label: torch.Tensor, indices) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for x, y, index in zip(image, label, indices):
            self.transform.set_random_state(seed=self.stream.patch_seed(int(index)))
            data = self.transform({"image": x, "label": y}, start=self.stream.worker_steps)
            images.append(torch.as_tensor(data["image"]))
            labels.append(torch.as_tensor(data["label"]))
        return torch.stack(images), torch.stack(labels)


class EpochSampler(torch.utils.data.Sampler):
    """A sampler whose indices are set before each epoch, so that one DataLoader (with persistent
    workers, which keep their copy of the cached volumes) serves the whole run."""

    def __init__(self, indices=()):
        self.indices = list(indices)

    def __iter__(self):
        return iter(list(self.indices))

    def __len__(self) -> int:
        return len(self.indices)
