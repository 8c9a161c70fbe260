"""Single-example 3D convolutions on CPU through oneDNN instead of PyTorch's slow reference kernel.

PyTorch picks a CPU convolution kernel by a heuristic (``use_mkldnn`` in
``aten/src/ATen/native/Convolution.cpp``; torch 2.13): a float32 convolution goes to oneDNN only
when, among other conditions, the batch holds more than one example, or N * C * D * H exceeds
20480, or it has several groups or a kernel larger than 3 in its last two axes; 1 x 1 x 1 kernels
on one thread stay on the reference kernel whatever the batch. Otherwise it runs ``slow_conv3d``
(vol2col plus a matrix product), forward and backward. At batch 1 on the study's network (DynUNet
8-16-32-64, patch 24 x 40 x 24) that made a training iteration slower than one at batch 2 (0.236 s
against 0.102 s, one thread; ``benchmarks/single_example_conv.py``). Batch size 1 is where 3D
medical training lives, so a convolution that receives one example, which PyTorch would run on
``slow_conv3d`` alone and on oneDNN as a pair (asked of PyTorch's own kernel selection,
``torch._C._select_conv_backend``), appends an all-zero example and returns the first example's
output. The zero example adds nothing to the weight or bias gradients (its output is not used), so
the result is the same convolution, rounded by a different kernel. The cost: the activations of a
routed convolution are kept for two examples (about twice the batch-1 activation memory).

Axes: (N, C, D, H, W) = (examples, channels, and the three spatial axes in voxels).
"""
from __future__ import annotations

import torch

_SELECT = getattr(torch._C, "_select_conv_backend", None)  # private; absent -> PyTorch's own choice
_SLOW = getattr(getattr(torch._C, "_ConvBackend", None), "Slow3d", None)


class SingleExampleConv3d(torch.nn.Conv3d):
    """``torch.nn.Conv3d`` that routes a single float32 CPU example through oneDNN (see module doc).

    Same parameters, state-dict keys and results (to float32 rounding) as ``torch.nn.Conv3d``. Input
    (N, C, D, H, W) -> output (N, C', D', H', W'). Anything else runs the parent's forward unchanged:
    N > 1, unbatched (C, D, H, W) input, other dtypes or devices, CPU autocast, ``torch.jit``
    tracing, and convolutions that PyTorch already runs on oneDNN (or would not, even as a pair).
    Under ``torch.compile`` every single float32 CPU example is routed (the kernel query is skipped).
    Raises what ``torch.nn.Conv3d`` raises.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._route(x):
            return super().forward(torch.cat([x, torch.zeros_like(x)]))[:1]
        return super().forward(x)

    def _route(self, x: torch.Tensor) -> bool:
        if not (x.dim() == 5 and x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
                and not x.is_mkldnn and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()):
            return False
        if torch.compiler.is_compiling():
            return True
        if _SELECT is None or _SLOW is None:
            return False
        if isinstance(self.padding, str):  # "same" or "valid"
            padding = [d * (k - 1) // 2 if self.padding == "same" else 0 for d, k in zip(self.dilation, self.kernel_size)]
        else:
            padding = list(self.padding)
        args = (self.weight, self.bias, list(self.stride), padding, list(self.dilation), False, [0, 0, 0], self.groups)
        try:
            return _SELECT(x, *args) == _SLOW and _SELECT(x.expand(2, *x.shape[1:]), *args) != _SLOW
        except RuntimeError:  # e.g. an input smaller than the kernel: the parent's forward says so
            return False


def route_single_examples_to_onednn(net: torch.nn.Module) -> torch.nn.Module:
    """Turn every plain ``torch.nn.Conv3d`` of ``net`` into a :class:`SingleExampleConv3d`, in place.

    The modules keep their parameters and buffers (the class is swapped, nothing is copied), so
    checkpoints load either way. Returns ``net``.
    """
    for module in net.modules():
        if type(module) is torch.nn.Conv3d:
            module.__class__ = SingleExampleConv3d
    return net
