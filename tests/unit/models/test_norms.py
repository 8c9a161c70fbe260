"""medseg.models.norms (with medseg.norm_registry): each norm's layers and options, the group-norm
channel check, batch statistics in eval mode, and the batch-dependence metric."""
import pytest
import torch
from monai.losses import DiceCELoss

from medseg.errors import ConfigError
from medseg.models import NORMS, NetworkSpec, build_unet
from medseg.norm_registry import REGISTRY
from medseg.models.norms import batch_dependence, batch_statistics

SMALL = dict(filters=[8, 16, 32], strides=[1, 2, 2])


def _net(norm, **kw):
    torch.manual_seed(0)
    return build_unet(NetworkSpec(in_channels=1, out_channels=3, norm=norm, num_groups=4, **{**SMALL, **kw}))


def test_instance_norm_is_independent_of_the_batch():
    net = _net("instance").train()
    x = torch.randn(4, 1, 16, 16, 16)
    with torch.no_grad():
        alone = net(x[:1])
        in_batch = net(x)[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(m.affine and not m.track_running_stats and m.eps == 1e-5 for m in norms)


def test_batch_norm_in_training_mode_depends_on_the_batch():
    net = _net("batch").train()
    x = torch.randn(4, 1, 16, 16, 16)
    with torch.no_grad():
        alone = net(x[:1])
        in_batch = net(x)[:1]
    assert not torch.allclose(alone, in_batch, atol=1e-3)


@pytest.mark.parametrize("norm", NORMS)
def test_each_norm_builds_and_trains_a_step(norm):
    net = _net(norm).train()
    entry = REGISTRY[norm]
    kinds = {"instance": torch.nn.InstanceNorm3d, "batch": torch.nn.BatchNorm3d, "group": torch.nn.GroupNorm}
    layers = [m for m in net.modules() if isinstance(m, tuple(kinds.values()))]
    if entry.identity:
        assert not layers
    else:  # every norm layer is the registry's kind, with its options (eps, affine, running statistics)
        assert layers and all(isinstance(m, kinds[entry.monai_name]) for m in layers)
        for key, value in entry.options.items():
            assert all(getattr(m, key) == value for m in layers), key
        assert all(m.training and (m.track_running_stats if isinstance(m, torch.nn.BatchNorm3d) else True)
                   for m in layers) and entry.batch_statistics == isinstance(layers[0], torch.nn.BatchNorm3d)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x = torch.randn(2, 1, 16, 16, 16)
    y = (x > 0.5).long() + (x > 1.2).long()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    before = [p.detach().clone() for p in net.parameters()]
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    if entry.groups is not None:
        assert all(m.num_groups == entry.groups for m in layers)


def test_group_norm_checks_every_channel_count():
    with pytest.raises(ConfigError) as e:
        build_unet(NetworkSpec(1, 3, filters=[12, 20, 40], strides=[1, 2, 2], norm="group", num_groups=8))
    assert "[12, 20]" in str(e.value) and "num_groups" in str(e.value)
    # the 3-channel output head carries no norm, so 8 groups work with 3 classes
    net = build_unet(NetworkSpec(1, 3, filters=[16, 32, 64], strides=[1, 2, 2], norm="group", num_groups=8))
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_batch_statistics_uses_the_batch_and_keeps_running_averages():
    net = _net("batch").train()
    x = torch.randn(3, 1, 16, 16, 16) * 2 + 1
    with torch.no_grad():
        net(x)  # move the running averages away from their initial values
        net.eval()
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
        saved = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
        running = net(x)
        with batch_statistics(net) as n:
            batch = net(x)
        assert n == len(bns) > 0
        assert not torch.allclose(running, batch, atol=1e-3)
        net.train()
        momentum = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 0.0  # train mode without moving the averages: batch statistics, as in training
        assert torch.allclose(batch, net(x), atol=1e-5)
        for m, mo in zip(bns, momentum):
            m.momentum = mo
    for m, (mean, var) in zip(bns, saved):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)


def test_batch_dependence_is_float_noise_for_instance_norm_and_large_for_batch_norm_in_train_mode():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 16, 16, 16, generator=gen) * torch.arange(1, 6).view(5, 1, 1, 1, 1)
    dep = {}
    for norm in ("instance", "batch"):
        net = build_unet(NetworkSpec(1, 3, [8, 16, 32], [1, 2, 2], norm=norm, deep_supervision=True), seed=0)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        dep[norm] = batch_dependence(net, x)
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats untouched
    # float32 logits of O(1): batched and single convolutions differ by a few ulps per op (1.2e-7
    # relative), summed over ~10 layers: well under 1e-4
    assert dep["instance"]["train"] < 1e-4 and dep["instance"]["eval"] < 1e-4
    assert dep["batch"]["eval"] < 1e-4  # running averages: independent of the batch
    assert dep["batch"]["train"] > 1e-2  # the other four examples set the statistics
    with pytest.raises(ValueError):
        batch_dependence(net, x[:1])
