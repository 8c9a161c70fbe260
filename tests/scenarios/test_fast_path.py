"""The fast path: augmentation on the training device, persistent DataLoader workers, and
torch.compile, in whole training runs. Its unit tests: CPU bf16 autocast in tests/unit/test_precision.py,
device augmentation in tests/unit/training/test_patch_stream.py, the compiler check in
tests/unit/test_config.py."""
import pytest
import torch

from medseg.config import load_config
from medseg.models import NetworkSpec, build_unet
from medseg.training.loop import Step, dice_ce_loss, train_epoch
from medseg.training.optim import build_optimizer, build_scheduler
from tests.conftest import ROOT, SAMPLE


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
