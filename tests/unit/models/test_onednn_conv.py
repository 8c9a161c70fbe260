"""medseg.models.onednn_conv: a single CPU example goes through oneDNN and computes the same convolution."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from medseg.models import NetworkSpec, build_unet
from medseg.models.onednn_conv import SingleExampleConv3d, route_single_examples_to_onednn

U = 2.0 ** -24  # float32 unit roundoff


def _conv(c_in=8, c_out=8):
    torch.manual_seed(0)
    return route_single_examples_to_onednn(torch.nn.Sequential(torch.nn.Conv3d(c_in, c_out, 3, padding=1)))[0]


def _kernels(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_a_single_float32_example_runs_onednn_forward_and_backward():
    conv = _conv()
    x = torch.randn(1, 8, 12, 20, 12, requires_grad=True)
    plain = torch.nn.Conv3d(8, 8, 3, padding=1)
    # PyTorch's own heuristic sends this shape to the reference kernel: the reason for the module
    assert "aten::slow_conv3d_forward" in _kernels(lambda: plain(x))
    ops = _kernels(lambda: conv(x).sum().backward())
    assert "aten::mkldnn_convolution" in ops
    assert not any("slow_conv3d" in op for op in ops), ops


def test_same_convolution_and_gradients_within_float32_rounding():
    """Output and gradients against a float64 reference, within the classic bound for a dot product
    of n terms in float32, |error| <= n u sum |w x| (Higham, Accuracy and Stability, 3.1), with
    n = C_in * 27 + 1 (the bias)."""
    conv = _conv()
    x = torch.randn(1, 8, 12, 20, 12, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    y.backward(g)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = conv.weight.detach().double().requires_grad_(), conv.bias.detach().double().requires_grad_()
    y64 = torch.nn.functional.conv3d(x64, w64, b64, padding=1)
    y64.backward(g.double())
    n = 8 * 27 + 1
    bound = n * U * (torch.nn.functional.conv3d(x64.abs(), w64.abs(), b64.abs(), padding=1)).detach()
    assert ((y.double() - y64).abs() <= bound + 1e-30).all()
    # gradient of the input: a transposed convolution of g with |w|, n = C_out * 27 terms
    gx_bound = 8 * 27 * U * torch.nn.grad.conv3d_input(x.shape, w64.abs(), g.double().abs(), padding=1)
    assert ((x.grad.double() - x64.grad).abs() <= gx_bound).all()
    # gradient of the weights: a sum over all D * H * W voxels of |x g|
    nv = 12 * 20 * 12
    gw_bound = nv * U * torch.nn.grad.conv3d_weight(x64.abs().detach(), w64.shape, g.double().abs(), padding=1)
    assert ((conv.weight.grad.double() - w64.grad).abs() <= gw_bound).all()
    assert torch.allclose(conv.bias.grad.double(), b64.grad, rtol=nv * U, atol=0)


@pytest.mark.parametrize("shape,dtype", [((2, 8, 8, 8, 8), torch.float32), ((1, 8, 8, 8, 8), torch.float64),
                                         ((8, 8, 8, 8), torch.float32)])  # the last: unbatched (C, D, H, W)
def test_other_inputs_run_the_parent_forward_unchanged(shape, dtype):
    conv = _conv().to(dtype)
    x = torch.randn(shape, dtype=dtype)
    assert torch.equal(conv(x), torch.nn.Conv3d.forward(conv, x))


def test_an_unbatched_single_channel_input_is_not_mistaken_for_one_example():
    conv = _conv(c_in=1)
    x = torch.randn(1, 12, 20, 12)  # (C, D, H, W) with C = 1
    assert conv(x).shape == (8, 12, 20, 12)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_no_zero_example_where_pytorch_runs_onednn_already():
    conv = _conv()
    assert conv._route(torch.randn(1, 8, 12, 20, 12))
    assert not conv._route(torch.randn(1, 8, 24, 120, 12))  # N * C * D * H = 23040 > 20480: oneDNN already
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast picks its own kernels
        assert not conv._route(torch.randn(1, 8, 12, 20, 12))


def test_no_zero_example_where_a_pair_would_stay_on_the_reference_kernel(one_thread):
    head = route_single_examples_to_onednn(torch.nn.Sequential(torch.nn.Conv3d(8, 3, 1)))[0]  # 1 x 1 x 1
    assert not head._route(torch.randn(1, 8, 12, 20, 12))


def test_the_unet_uses_it_and_keeps_its_checkpoint_keys():
    spec = NetworkSpec(1, 3, [8, 16, 32], [1, 2, 2], norm="instance")
    net = build_unet(spec, seed=0)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(type(m) is SingleExampleConv3d for m in convs)
    plain = build_unet(spec, seed=0)
    for m in plain.modules():
        if type(m) is SingleExampleConv3d:
            m.__class__ = torch.nn.Conv3d
    plain.load_state_dict(net.state_dict())  # the same keys and shapes, in both directions
    net.load_state_dict(plain.state_dict())
