"""Normalization layers at work (the registry and its MONAI norm spec for DynUNet are in
:mod:`medseg.norm_registry`): measurements of how a trained network's norms behave (batch statistics vs running
averages, dependence of an example's output on its batch).

* ``instance`` (default): per example and channel over (D, H, W); affine, eps 1e-5, no running
  statistics (Ulyanov et al. 2016), so training and inference compute the same function and an
  example's output does not depend on its batch.
* ``group``: channels split into ``num_groups`` groups, statistics per example and group
  (Wu & He, ECCV 2018). ``layer``: group norm with one group (Ba et al. 2016).
* ``batch``: statistics over (N, D, H, W) with running averages for inference (Ioffe & Szegedy 2015);
  SyncBatchNorm under DDP.
* ``none``: no normalization (identity), a baseline for the normalizer study.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def batch_statistics(network: torch.nn.Module):
    """Within the block, batch-norm layers in eval mode normalize with the statistics of the batch
    they see instead of their running averages (and leave the running averages untouched).

    Used to measure batch norm's train/test discrepancy: in eval mode BN uses running means and
    variances accumulated in training; here it uses those of the current batch, as in training.
    Other layers are unaffected.
    """
    saved = []
    for m in network.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.running_mean, m.running_var))
            m.running_mean, m.running_var = None, None  # F.batch_norm then uses batch statistics
    try:
        yield len(saved)
    finally:
        for m, mean, var in saved:
            m.running_mean, m.running_var = mean, var


@torch.no_grad()
def batch_dependence(network: torch.nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """How much one example's output depends on the rest of its batch.

    The largest absolute logit difference between ``batch[:1]`` inferred alone and the same example
    as the first of ``batch``, in train mode (batch norm uses the batch's statistics) and in eval
    mode (batch norm uses its running averages). Instance, group and layer norm and ``none`` give 0
    or float32 rounding in both modes (exactly 0 on CPU for medseg's U-Net, whose single examples
    run on the same oneDNN kernels as a batch: :mod:`medseg.models.onednn_conv`; about 1e-6 to
    1e-5 where the kernels differ); batch norm gives a large value in train mode. Runs in float32 without autocast, on a copy of the network (so running statistics are
    not updated); with deep supervision the full-resolution head is compared.

    Args:
        network: the network, on its device.
        batch: (N, C, D, H, W) with N >= 2.

    Returns:
        ``{"train": float, "eval": float}`` (logit units).

    Raises:
        ValueError: fewer than 2 examples.
    """
    if batch.shape[0] < 2:
        raise ValueError(f"batch_dependence needs at least 2 examples, got {batch.shape[0]}")
    import copy
    net = copy.deepcopy(network).float()
    device = next(net.parameters()).device
    x = batch.to(device=device, dtype=torch.float32)
    out = {}
    for mode in ("train", "eval"):
        net.train(mode == "train")
        alone, inside = net(x[:1]), net(x)[:1]
        if alone.dim() == x.dim() + 1:  # deep supervision (N, heads, K, D, H, W): the full-resolution head
            alone, inside = alone[:, 0], inside[:, 0]
        out[mode] = float((alone - inside).abs().max())
    return out


@torch.no_grad()
def precise_batch_norm(network: torch.nn.Module, batches) -> torch.nn.Module:
    """A copy of ``network`` whose batch-norm running statistics are re-estimated from ``batches``
    with the final weights: every batch counts equally, and the exponential moving average of
    training (momentum 0.1 over weights that kept changing) is discarded.

    This is "precise BN" (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576,
    Sec. 3.3; earlier in He et al. 2016's ResNet release), done with PyTorch's
    :func:`torch.optim.swa_utils.update_bn` (running averages reset, ``momentum=None``: a cumulative
    mean of the per-batch means and unbiased variances). At batch size B each batch's variance is
    the variance within its B examples, as in training. Other layers are unaffected; the network
    passed in is not changed. Runs in float32, in train mode (so deep supervision heads run too; the
    outputs are discarded).

    Args:
        network: the trained network, on its device.
        batches: an iterable of (N, C, D, H, W) float tensors (training patches).

    Returns:
        The copy, in eval mode, on the same device.
    """
    import copy

    from torch.optim.swa_utils import update_bn
    net = copy.deepcopy(network).float()
    device = next(net.parameters()).device
    update_bn(batches, net, device=device)
    return net.eval()
