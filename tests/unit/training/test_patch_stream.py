"""medseg.training.patch_stream: the seeded patch stream (the i-th patch does not depend on the batch
size) and augmentation on the training device."""
from __future__ import annotations

import pytest
import torch

from medseg import transforms as mt
from medseg.config import AugmentConfig
from medseg.data import compute_fingerprint, read_dataset
from medseg.plan import make_plan
from medseg.training import distributed as dist
from medseg.training.patch_stream import DeviceAugmentation, EpochPatchStream
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def volumes():
    spec = read_dataset(SAMPLE)
    plan = make_plan(compute_fingerprint(spec), patch_size=(24, 40, 24), strides=[1, 2, 2, 2])
    from monai.transforms import EnsureTyped
    pre, prep = mt.preprocessing(plan), mt.patch_preparation(plan)
    return plan, [EnsureTyped(keys=("image", "label"), track_meta=False)(prep(pre(c.as_dict())))
                  for c in spec.cases[:4]]


def _indices(batch_size: int, iterations_per_epoch: int, epochs: int) -> list[int]:
    """The stream indices a run consumes, in order (one process), as run.py asks for them."""
    per_epoch = iterations_per_epoch * batch_size
    return [i for e in range(epochs) for i in dist.rank_indices(e, per_epoch, 0, batch_size, dist.DistInfo())]


def test_children_of_one_seed_see_the_same_patches_whatever_the_batch_size(volumes):
    """Batch 1 in 3 epochs of 4 iterations and batch 3 in 2 epochs of 2 iterations: the i-th patch
    is the same (case, crop centre, augmentation draws) for every i of the shorter run."""
    plan, vols = volumes
    every = AugmentConfig(probability=1.0)  # every transform fires
    chain = lambda: mt.patch_sampling_and_augmentation(plan, augment=every)  # noqa: E731
    runs = {}
    for bs, ipe, epochs in ((1, 4, 3), (3, 2, 2)):
        stream = EpochPatchStream(vols, chain(), patches_per_epoch=ipe * bs, seed=7)
        idx = _indices(bs, ipe, epochs)
        assert idx == list(range(len(idx)))  # the run consumes the stream in order, without gaps
        runs[bs] = [stream[i][0] for i in idx]
    assert len(runs[1]) == 12 and len(runs[3]) == 12
    for a, b in zip(runs[1], runs[3]):
        assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
        assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))
    other_seed = EpochPatchStream(vols, chain(), patches_per_epoch=4, seed=8)
    assert not torch.equal(torch.as_tensor(other_seed[0][0]["image"]), torch.as_tensor(runs[1][0]["image"]))


@pytest.fixture(scope="module")
def sample_volumes():
    spec = read_dataset(SAMPLE)
    plan = make_plan(compute_fingerprint(spec), patch_size=(32, 32, 32), strides=[1, 2, 2, 2])
    pre, prep = mt.preprocessing(plan), mt.patch_preparation(plan)
    from monai.transforms import EnsureTyped
    volumes = [EnsureTyped(keys=("image", "label"), track_meta=False)(prep(pre(c.as_dict()))) for c in spec.cases[:3]]
    return plan, volumes


def test_device_augmentation_gives_the_workers_patches(sample_volumes):
    """Crop in the worker + augmentation on the device = the whole chain in the worker, patch by patch."""
    plan, volumes = sample_volumes
    every = AugmentConfig(probability=1.0)  # every transform fires
    chain = lambda: mt.patch_sampling_and_augmentation(plan, augment=every)  # noqa: E731
    whole = EpochPatchStream(volumes, chain(), patches_per_epoch=6, seed=3)
    split = EpochPatchStream(volumes, chain(), patches_per_epoch=6, seed=3, worker_steps=mt.CROP_STEPS)
    on_device = DeviceAugmentation(split)
    indices = [0, 5, 6, 11]  # epochs 0 and 1
    ref = [whole[i][0] for i in indices]
    crops = [split[i][0] for i in indices]
    assert [c["index"] for c in crops] == indices
    image, label = on_device(torch.stack([c["image"] for c in crops]), torch.stack([c["label"] for c in crops]),
                             indices)
    for k, r in enumerate(ref):
        assert not torch.equal(crops[k]["image"], torch.as_tensor(r["image"]))  # augmentation did something
        torch.testing.assert_close(image[k], torch.as_tensor(r["image"]), rtol=0, atol=1e-6)
        assert torch.equal(label[k], torch.as_tensor(r["label"]))
