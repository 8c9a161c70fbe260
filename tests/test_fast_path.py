"""The fast path: CPU bf16 autocast, augmentation on the training device, persistent DataLoader
workers, and torch.compile."""
import os

import pytest
import torch

from medseg import transforms as mt
from medseg.config import load_config
from medseg.data import compute_fingerprint, read_dataset
from medseg.errors import ConfigError
from medseg.precision import autocast, effective_amp, native_cpu_bf16
from medseg.models import NetworkSpec, build_unet
from medseg.plan import make_plan
from medseg.training.loop import Step, dice_ce_loss, train_epoch
from medseg.training.optim import build_optimizer, build_scheduler
from medseg.training.patch_stream import DeviceAugmentation, EpochPatchStream
from tests.conftest import ROOT, SAMPLE


def test_effective_amp_on_cpu():
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    native = native_cpu_bf16()
    if flags:
        assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert effective_amp("cpu", "bf16") == ("bf16" if native else "none")
    assert effective_amp("cpu", "fp16") == "none" and effective_amp("cpu", "none") == "none"
    conv = torch.nn.Conv3d(1, 2, 3)
    with autocast(torch.device("cpu"), "bf16"):
        y = conv(torch.randn(1, 1, 8, 8, 8))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)


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
    chain = lambda: mt.patch_sampling_and_augmentation(plan, probability=1.0)  # noqa: E731 every transform fires
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


def test_persistent_workers_device_augmentation_and_compile_train_the_same_run(tmp_path, monkeypatch):
    """One loader for the run (a worker process kept across epochs), augmentation in the main
    process and a compiled network give the same losses as the whole chain in the main process and
    the eager network: same patches in the same order in both epochs."""
    from medseg.training.run import run_training

    monkeypatch.chdir(tmp_path)
    # float32 on both sides: the point is the patch stream, and bf16 autocast rounds compiled and
    # eager kernels differently by ~1e-3 (bf16 has an 8-bit mantissa: 2^-8 = 3.9e-3 per op)
    base = [f"data.root={SAMPLE}", "train.epochs=2", "train.iterations_per_epoch=2", "validation.hd95=false",
            "validation.every_n_epochs=2", "train.deterministic=true", "train.amp=none"]
    ref = run_training(load_config(ROOT / "configs/demo.yaml", [*base, "output_dir=ref"]))
    fast = run_training(load_config(ROOT / "configs/demo.yaml", [
        *base, "output_dir=fast", "data.num_workers=1", "data.persistent_workers=true", "augment.on_device=true",
        "train.compile=true"]))
    losses = [[h["train_loss"] for h in r.history] for r in (ref, fast)]
    # In float32, compiled kernels differ from eager ones only in the order of reductions: a relative
    # error of a few float32 ulps (1.2e-7) per op, grown over 4 optimizer steps to well under 1e-4.
    # Other patches change the loss by percents: the two epochs' losses (other patches, 2 steps
    # later) must differ by far more than the tolerance, or the comparison would prove nothing.
    tol = 1e-4
    assert len(losses[0]) == 2 and abs(losses[0][0] - losses[0][1]) > 100 * tol * abs(losses[0][0])
    assert losses[1] == pytest.approx(losses[0], rel=tol)


def test_compiled_training_step_matches_eager():
    net_spec = NetworkSpec(1, 3, [4, 8, 16], [1, 2, 2], norm="instance")
    gen = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randn(2, 1, 16, 16, 16, generator=gen),
              "label": torch.randint(0, 3, (2, 1, 16, 16, 16), generator=gen)}]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = build_unet(net_spec)
        opt = build_optimizer(net.parameters(), "sgd", 0.01)
        model = torch.compile(net) if compiled else net
        stats = train_epoch(model, batch * 2, Step(dice_ce_loss(), opt, build_scheduler(opt, 2), torch.device("cpu")))
        losses.append(stats["train_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # compiled, not an eager fallback


def test_compile_without_a_compiler_is_a_config_error(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        load_config(ROOT / "configs/demo.yaml", ["train.compile=true"])
    assert load_config(ROOT / "configs/demo.yaml", ["train.compile=false"]).train.compile is False
