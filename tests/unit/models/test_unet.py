"""medseg.models.unet: the U-Net factory (deep supervision heads, seeded initial weights)."""
import torch
from monai.losses import DiceCELoss

from medseg.models import NORMS, NetworkSpec, build_unet
from medseg.training.loop import deep_supervision_loss

SMALL = dict(filters=[8, 16, 32], strides=[1, 2, 2])


def _net(norm, **kw):
    torch.manual_seed(0)
    return build_unet(NetworkSpec(in_channels=1, out_channels=3, norm=norm, num_groups=4, **{**SMALL, **kw}))


def test_deep_supervision_output_and_loss():
    net = _net("instance", deep_supervision=True).train()
    out = net(torch.randn(2, 1, 16, 16, 16))
    assert out.shape == (2, 2, 3, 16, 16, 16)  # (N, heads, K, X, Y, Z)
    y = torch.randint(0, 3, (2, 1, 16, 16, 16))
    loss = deep_supervision_loss(DiceCELoss(to_onehot_y=True, softmax=True), out, y)
    assert torch.isfinite(loss)
    net.eval()
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_every_norm_starts_from_the_same_convolution_weights():
    convs = {}
    for norm in NORMS:
        net = build_unet(NetworkSpec(1, 3, [8, 16, 32, 64], [1, 2, 2, 2], norm=norm, num_groups=4), seed=3)
        convs[norm] = {k: v for k, v in net.state_dict().items() if v.dim() == 5}  # conv kernels
    ref = convs["instance"]
    assert len(ref) > 10
    for norm, weights in convs.items():
        assert weights.keys() == ref.keys(), norm
        assert all(torch.equal(weights[k], ref[k]) for k in ref), norm
    other = build_unet(NetworkSpec(1, 3, [8, 16, 32, 64], [1, 2, 2, 2]), seed=4).state_dict()
    assert not torch.equal(other[next(iter(ref))], ref[next(iter(ref))])
