"""medseg.transforms: preprocessing and patch sampling on real volumes (the ``hippo_plan`` fixture is
in tests/conftest.py; the fingerprint itself: tests/unit/data/test_fingerprint.py)."""
import nibabel as nib
import numpy as np
import pytest
import torch

from medseg import transforms as mt
from medseg.config import AugmentConfig
from medseg.data import compute_fingerprint, read_dataset
from medseg.plan import make_plan
from tests.conftest import SAMPLE, shared


def test_mri_zscore_over_nonzero(hippo_plan):
    case = read_dataset(SAMPLE).cases[0].as_dict()
    out = mt.preprocessing(hippo_plan)(case)
    img = out["image"].numpy()[0]
    nz = img[img != 0]
    assert abs(nz.mean()) < 1e-3 and abs(nz.std() - 1) < 1e-3
    assert out["image"].shape[1:] == out["label"].shape[1:]


def test_ct_is_reoriented_resampled_and_clipped():
    root = shared("OpenKBP_HeadNeckCT")
    spec = read_dataset(root)
    spec.cases[:] = spec.cases[:3]
    fp = compute_fingerprint(spec)
    plan = make_plan(fp, target_spacing=(4.0, 4.0, 3.0), patch_size=(64, 64, 64), strides=[1, 2, 2, 2])
    assert plan.ct_clip is not None
    case = spec.cases[0]
    src = nib.load(case.image)
    assert nib.aff2axcodes(src.affine) == ("P", "L", "I")
    out = mt.preprocessing(plan)(case.as_dict())
    aff = out["image"].affine.numpy()
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(aff)[:3]), (4.0, 4.0, 3.0), atol=1e-4)
    img = out["image"].numpy()
    lo, hi = [(v - plan.ct_mean) / plan.ct_std for v in plan.ct_clip]
    assert img.min() >= lo - 1e-4 and img.max() <= hi + 1e-4
    # the label moved with the image: same world position of the label's centre of mass
    lab_src = np.asarray(nib.load(case.label).dataobj)
    com_src = src.affine @ np.r_[np.argwhere(lab_src == 5).mean(0), 1]
    lab = out["label"].numpy()[0]
    com_out = aff @ np.r_[np.argwhere(lab == 5).mean(0), 1]
    assert np.allclose(com_src[:3], com_out[:3], atol=3.0)  # within a voxel (mm)
    # cropping to the nonzero (scanned) box keeps every labelled voxel and only drops air
    from dataclasses import replace
    cropped = mt.preprocessing(replace(plan, crop_foreground=True))(case.as_dict())
    assert np.prod(cropped["image"].shape) < np.prod(out["image"].shape)
    for k in range(1, 6):
        assert (cropped["label"].numpy() == k).sum() == (lab == k).sum()


def test_patches_are_padded_and_foreground_oversampled(hippo_plan):
    from dataclasses import replace
    plan = replace(hippo_plan, patch_size=(48, 64, 48))  # larger than every sample volume: padding
    case = read_dataset(SAMPLE).cases[0].as_dict()
    vol = mt.patch_preparation(plan)(mt.preprocessing(plan)(case))
    rand = mt.patch_sampling_and_augmentation(plan, foreground_oversampling=1.0)
    rand.set_random_state(0)
    for _ in range(5):
        (patch,) = rand(dict(vol))
        assert tuple(patch["image"].shape) == (1, 48, 64, 48) and tuple(patch["label"].shape) == (1, 48, 64, 48)
    plan_small = replace(hippo_plan, patch_size=(16, 16, 16))
    vol = mt.patch_preparation(plan_small)(mt.preprocessing(plan_small)(case))
    off = AugmentConfig(flip=False, rotate_scale=False, gamma=False, noise=False, brightness_contrast=False)
    crop_only = mt.patch_sampling_and_augmentation(plan_small, foreground_oversampling=1.0, augment=off)
    crop_only.set_random_state(0)
    assert all(torch.as_tensor(crop_only(dict(vol))[0]["label"]).max() > 0 for _ in range(20))
    assert mt.class_ratios(3, 0.33) == pytest.approx([0.67, 0.165, 0.165])
