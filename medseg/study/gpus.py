"""Several sweep children per GPU: each child goes to a GPU by its memory estimate and what the
GPU has free, so a GPU that one small 3D U-Net leaves mostly idle trains several at once.

A child's need is its training-iteration estimate (:func:`medseg.models.memory.training_memory_bytes`)
plus :data:`CUDA_CONTEXT_BYTES` for its CUDA context, times :data:`SAFETY`. The free memory of
each GPU is read once, when the sweep starts (``torch.cuda.mem_get_info``), and the placer keeps
account of what it gave out: reading it again while children are allocating would be racy. A
child goes to the GPU with the most room left among those it fits on (8 equal children on 2 equal
GPUs: 4 each); when none has room, it waits for a running child to end; a child that would not fit
even on an empty GPU is refused before the sweep starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CUDA_CONTEXT_BYTES = 1 << 30  # a CUDA context, cuDNN workspaces and the allocator's reserve, per process
SAFETY = 1.25  # the estimate is a lower bound (models/memory.py): leave a quarter more


@dataclass(frozen=True)
class Gpu:
    """One GPU: its index (``CUDA_VISIBLE_DEVICES``) and free memory in bytes at the sweep's start."""

    index: int
    free_bytes: int


def gpu_inventory() -> list[Gpu]:
    """This machine's GPUs with their free memory now (empty without CUDA)."""
    import torch
    if not torch.cuda.is_available():
        return []
    return [Gpu(i, int(torch.cuda.mem_get_info(i)[0])) for i in range(torch.cuda.device_count())]


def child_need_bytes(iteration_bytes: int) -> int:
    """The GPU memory to reserve for a child whose training iteration is estimated at ``iteration_bytes``."""
    return int((iteration_bytes + CUDA_CONTEXT_BYTES) * SAFETY)


@dataclass
class GpuPlacer:
    """Keeps account of the memory given to running children on each GPU.

    Args:
        gpus: the inventory (:func:`gpu_inventory`, or a fake one in tests).
    """

    gpus: list[Gpu]
    reserved: dict[int, int] = field(default_factory=dict)

    def room(self, index: int) -> int:
        """Bytes still free on GPU ``index`` after what was reserved."""
        gpu = next(g for g in self.gpus if g.index == index)
        return gpu.free_bytes - self.reserved.get(index, 0)

    def fits_ever(self, need: int) -> bool:
        """Whether a child needing ``need`` bytes fits on some GPU when nothing else runs there."""
        return any(g.free_bytes >= need for g in self.gpus)

    def place(self, need: int) -> int | None:
        """Reserve ``need`` bytes on the GPU with the most room that holds them; its index, or None
        when no GPU has room now (the child waits)."""
        fitting = [g.index for g in self.gpus if self.room(g.index) >= need]
        if not fitting:
            return None
        index = max(fitting, key=lambda i: (self.room(i), -i))
        self.reserved[index] = self.reserved.get(index, 0) + need
        return index

    def release(self, index: int, need: int) -> None:
        """A child on GPU ``index`` that reserved ``need`` bytes has ended."""
        self.reserved[index] = max(0, self.reserved.get(index, 0) - need)
