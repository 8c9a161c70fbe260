"""Single-example 3D convolutions on CPU through oneDNN instead of PyTorch's slow reference kernel.

PyTorch picks a CPU convolution kernel by a heuristic (``use_mkldnn`` in
``aten/src/ATen/native/Convolution.cpp``): a float32 convolution with a 3 x 3 x 3 kernel and one
group goes to oneDNN only when the batch holds more than one example or N * C * D * H exceeds 20480;
otherwise it runs ``slow_conv3d`` (vol2col plus a matrix product), forward and backward. At batch 1
on the study's network (DynUNet 8-16-32-64, patch 24 x 40 x 24) that kernel made a training
iteration slower than one at batch 2 (0.23 s against 0.10 s, one thread; ``benchmarks/
single_example_conv.py``). Batch size 1 is where 3D medical training lives, so a convolution that
receives one example on CPU in float32 appends an all-zero example, which sends it to oneDNN, and
returns the first example's output. The zero example adds nothing to the weight or bias gradients
(its output is not used), so the result is the same convolution, rounded by a different kernel.

Axes: (N, C, D, H, W) = (examples, channels, and the three spatial axes in voxels).
"""
from __future__ import annotations

import torch


class SingleExampleConv3d(torch.nn.Conv3d):
    """``torch.nn.Conv3d`` that routes a single float32 CPU example through oneDNN (see module doc).

    Same parameters, state-dict keys and results (to float32 rounding) as ``torch.nn.Conv3d``;
    anything other than N = 1, float32 on CPU runs the parent's forward unchanged.
    Input (N, C_in, D, H, W); output (N, C_out, D', H', W').
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32 and not x.is_mkldnn:
            return super().forward(torch.cat([x, torch.zeros_like(x)]))[:1]
        return super().forward(x)


def route_single_examples_to_onednn(net: torch.nn.Module) -> torch.nn.Module:
    """Turn every plain ``torch.nn.Conv3d`` of ``net`` into a :class:`SingleExampleConv3d`, in place.

    The modules keep their parameters and buffers (the class is swapped, nothing is copied), so
    checkpoints load either way. Returns ``net``.
    """
    for module in net.modules():
        if type(module) is torch.nn.Conv3d:
            module.__class__ = SingleExampleConv3d
    return net
