"""medseg.training.bn_modes and medseg.models.norms.precise_batch_norm: batch norm's final network
inferred with running averages (a), each window's own statistics (b) and re-estimated population
statistics (c), on a tiny network."""
import functools

import numpy as np
import torch

from medseg.inference.sliding_window import make_inferer, predict_probabilities
from medseg.keys import BN_MODE_CASE_DICE, BN_MODE_DICE_MEAN
from medseg.models import NetworkSpec, build_unet
from medseg.models.norms import batch_statistics, precise_batch_norm
from medseg.plan import Plan
from medseg.training.bn_modes import batch_norm_modes, training_batches
from medseg.training.distributed import DistInfo
from medseg.training.validation import Validator

SMALL = dict(filters=[8, 16, 32], strides=[1, 2, 2])
PATCH = (16, 16, 16)
F32_EPS = float(torch.finfo(torch.float32).eps)


@functools.cache
def _trained() -> tuple[dict, dict]:
    """The state dicts of :func:`_trained_pair` (trained once per session)."""
    bn, inorm = _train_pair()
    return bn.state_dict(), inorm.state_dict()


def _trained_pair():
    """Fresh copies of the trained batch-norm and instance-norm networks (tests may change them)."""
    bn_state, in_state = _trained()
    bn = build_unet(NetworkSpec(in_channels=1, out_channels=3, norm="batch", **SMALL))
    inorm = build_unet(NetworkSpec(in_channels=1, out_channels=3, norm="instance", **SMALL))
    bn.load_state_dict(bn_state)
    inorm.load_state_dict(in_state)
    return bn.eval(), inorm.eval()


def _train_pair():
    """A batch-norm network after a few steps (so its running averages and affine weights are not
    the initial ones) and an instance-norm network with the same weights."""
    torch.manual_seed(0)
    bn = build_unet(NetworkSpec(in_channels=1, out_channels=3, norm="batch", **SMALL))
    opt = torch.optim.SGD(bn.parameters(), lr=0.05)
    for _ in range(4):
        x = torch.randn(2, 1, *PATCH) * 3 + 1
        loss = bn(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    inorm = build_unet(NetworkSpec(in_channels=1, out_channels=3, norm="instance", **SMALL))
    loaded = inorm.load_state_dict(bn.state_dict(), strict=False)  # batch norm's buffers have no counterpart
    assert not loaded.missing_keys and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
                                           for k in loaded.unexpected_keys)
    return bn.eval(), inorm.eval()


def test_one_window_with_its_own_statistics_is_instance_norm_at_batch_one():
    bn, inorm = _trained_pair()
    image = torch.randn(1, 1, 28, 24, 20) * 2 + 3  # several overlapping windows
    one_window = make_inferer(PATCH, overlap=0.5, sw_batch_size=1)
    with batch_statistics(bn):
        window = predict_probabilities(bn, image, one_window)
        with torch.no_grad():
            logits_b = bn(image[..., :16, :16, :16])
    reference = predict_probabilities(inorm, image, one_window)
    with torch.no_grad():
        logits_i = inorm(image[..., :16, :16, :16])
        running = bn(image[..., :16, :16, :16])
    # the same computation (per example and channel over D, H, W); another kernel may reduce in
    # another order: float32 rounding of a mean over n voxels is about sqrt(n) eps relative, summed
    # over the network's 10 normalized layers (16^3 voxels: 64 eps each), of the logits' scale
    scale = float(logits_i.abs().max())
    tol = 10 * 64 * F32_EPS * scale
    assert float((logits_b - logits_i).abs().max()) <= tol
    assert float((window - reference).abs().max()) <= 10 * 64 * F32_EPS  # probabilities: at most 1
    # and the running averages (mode a) compute something else
    assert float((running - logits_i).abs().max()) > 100 * tol


def test_precise_statistics_are_the_mean_of_the_batch_statistics_and_leave_the_network_alone():
    bn, _ = _trained_pair()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    torch.manual_seed(1)
    batches = [torch.randn(2, 1, *PATCH) * 2 + 5 for _ in range(6)]
    precise = precise_batch_norm(bn, batches)
    assert not precise.training
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items()), "the network passed in is unchanged"
    # the first layer sees the input convolved: its statistics over each batch, averaged with equal weight
    first_conv, first_bn = precise.input_block.conv1, precise.input_block.norm1
    with torch.no_grad():
        feats = [first_conv(x) for x in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3, 4)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3, 4), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(first_bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    assert torch.allclose(first_bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first_bn.running_mean, bn.input_block.norm1.running_mean, atol=1e-3)


class _Stream:
    """A patch stream stand-in: index i -> one patch whose voxels are all i (as a list, like MONAI's crop)."""

    def __getitem__(self, i):
        return [{"image": torch.full((1, *PATCH), float(i)), "label": torch.zeros((1, *PATCH))}]


def test_training_batches_are_the_first_patches_of_the_stream_at_the_batch_size():
    batches = list(training_batches(_Stream(), batch_size=4, n_patches=10))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert [float(x[0, 0, 0, 0]) for b in batches for x in b] == list(range(10))
    assert all(b.dtype == torch.float32 and b.shape[1:] == (1, *PATCH) for b in batches)


def test_batch_norm_modes_report_per_case_dice_for_window_and_precise_statistics():
    bn, inorm = _trained_pair()
    plan = Plan(modality=["MRI"], labels={0: "background", 1: "a", 2: "b"}, target_spacing=(1.0, 1.0, 1.0),
                patch_size=PATCH)
    rng = np.random.default_rng(0)
    volumes = [{"case_id": f"case{i}", "image": torch.as_tensor(rng.normal(2, 1, (1, 20, 18, 16)), dtype=torch.float32),
                "label": torch.as_tensor(rng.integers(0, 3, (1, 20, 18, 16)))} for i in range(2)]
    inferer = make_inferer(PATCH, overlap=0.5, sw_batch_size=4)
    validator = Validator(bn, volumes, inferer, plan, "none", DistInfo())
    batches = [torch.randn(1, 1, *PATCH) * 2 + 5 for _ in range(4)]
    out = batch_norm_modes(validator, batches)
    for mode in ("window", "precise"):
        keys = [k for k in out if k.startswith(BN_MODE_CASE_DICE[mode] + "/")]
        assert sorted(keys) == sorted(f"{BN_MODE_CASE_DICE[mode]}/case{i}/{n}" for i in range(2) for n in "ab")
        assert np.isclose(out[BN_MODE_DICE_MEAN[mode]], np.mean([out[k] for k in keys]))
    # window statistics at batch 1 are instance norm's: the same Dice, case by case
    reference = Validator(inorm, volumes, make_inferer(PATCH, overlap=0.5, sw_batch_size=1), plan, "none",
                          DistInfo()).run()
    for case in reference["cases"]:
        for k, name in plan.foreground_labels.items():
            assert out[f"{BN_MODE_CASE_DICE['window']}/{case['case_id']}/{name}"] == case[k]["dice"]
    assert validator.inferer.sw_batch_size == 4, "the run's inferer is left as it was"
