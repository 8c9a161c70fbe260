"""Data-parallel training with PyTorch's engine: ``torchrun`` + DistributedDataParallel (DDP).

``torchrun --nproc-per-node N -m medseg train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; medseg
then joins the process group (NCCL on CUDA, gloo on CPU), gives each process one GPU
(LOCAL_RANK), wraps the network in DDP, converts batch norm to SyncBatchNorm unless
``train.sync_bn: false``, shards the patch stream and the validation cases over the processes,
and lets only rank 0 write checkpoints, plots, the model directory and MLflow. Without those
variables everything below is a no-op (one process).

``train.batch_size`` is per process: one iteration consumes ``batch_size x world_size`` patches.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent); else a one-process DistInfo.

    Args:
        device_type: ``cuda`` (NCCL, one GPU per LOCAL_RANK) or ``cpu`` (gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local)


def shutdown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class CPUSyncBatchNorm(torch.nn.BatchNorm3d):
    """Synchronized batch norm for CPU processes (gloo), which ``torch.nn.SyncBatchNorm`` does not
    support: in training, the mean and variance of each channel are taken over the global batch
    (every rank's N, D, H, W), as SyncBatchNorm does on GPUs (Peng et al. 2018, MegDet).

    The per-rank sums of x and x^2 and the voxel counts are summed with
    ``torch.distributed.nn.functional.all_reduce``, whose backward all-reduces the gradients, so
    the input gradients are those of the global batch statistics. Running averages use the
    unbiased global variance, as in BatchNorm3d. In eval mode it is BatchNorm3d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        x = x.as_subclass(torch.Tensor)  # MONAI MetaTensor -> Tensor (keeps autograd)
        dims = [0] + list(range(2, x.dim()))
        x64 = x.double()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        with warnings.catch_warnings():  # "deprecated" for torch.compile users; it is the autograd-aware one
            warnings.simplefilter("ignore", FutureWarning)
            stats = all_reduce(torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count]))
        c = x.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                # momentum None: a cumulative average, as torch's BatchNorm (precise BN re-estimates so)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x64 - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Batch-norm layers -> synchronized ones, in place (weights and running averages kept):
    ``torch.nn.SyncBatchNorm`` on GPUs, :class:`CPUSyncBatchNorm` on CPU."""
    if device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    for name, child in list(network.named_children()):
        if isinstance(child, torch.nn.BatchNorm3d) and not isinstance(child, CPUSyncBatchNorm):
            new = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(network, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return network


def wrap(network: torch.nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """The module to train with: the network itself, or DDP around it (synchronized batch norm
    first when ``sync_bn``). Weights stay shared with ``network``, which is saved and validated."""
    if not info.enabled:
        return network
    if sync_bn:  # replaces the batch-norm children in place (the top module is not a norm)
        convert_sync_batchnorm(network, device)
    return torch.nn.parallel.DistributedDataParallel(
        network, device_ids=[device.index or 0] if device.type == "cuda" else None)


def rank_indices(epoch: int, patches_per_epoch: int, start_iteration: int, batch_size: int, info: DistInfo) -> list[int]:
    """This rank's patch-stream indices for ``epoch`` from ``start_iteration`` on: iteration i of
    the job uses global positions ``[i * B * W, (i + 1) * B * W)`` and rank r the r-th block of B."""
    base, per_iteration = epoch * patches_per_epoch, batch_size * info.world_size
    out = []
    for i in range(start_iteration, patches_per_epoch // per_iteration):
        first = base + i * per_iteration + info.rank * batch_size
        out.extend(range(first, first + batch_size))
    return out


def broadcast(obj, info: DistInfo, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any (e.g. a signal that reached one process)."""
    if not info.enabled:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(value: float, info: DistInfo) -> float:
    """The mean of a float over ranks."""
    if not info.enabled:
        return value
    return sum(gather(value, info)) / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled:
        dist.barrier()
