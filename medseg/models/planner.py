"""A network planned from the dataset: target spacing, patch size, batch size and the U-Net's
levels, strides, kernel sizes and filters, by the rules of nnU-Net's experiment planner
(Isensee et al. 2021, Nature Methods; its 3d_fullres configuration), from the dataset fingerprint
(:mod:`medseg.data.fingerprint`) and a memory budget.

Axes: spacings are mm and shapes voxels along the preprocessed (RAS) axes, in that order.

The rules:

* **Target spacing**: the median spacing per axis; an axis much coarser than the finest (ratio
  above :data:`ANISOTROPY_RATIO`) gets the 10th percentile of its spacings instead, so that the
  thick-slice cases of a dataset are not resampled coarser still.
* **Topology**, level by level from full resolution: an axis is downsampled (stride 2) while its
  feature map keeps at least :data:`MIN_FEATURE_MAP` voxels after the downsampling and its
  current spacing is within :data:`POOL_SPACING_RATIO` of the finest among the axes that can
  still be downsampled. A level's convolutions have kernel size 3 along an axis whose current
  spacing is within :data:`POOL_SPACING_RATIO` of the finest, and 1 along an axis that is still much
  coarser; once 3, an axis stays 3. The bottleneck's kernels are 3. The patch is rounded up to a
  multiple of the total downsampling per axis.
* **Filters**: :data:`BASE_FILTERS` at full resolution, doubling per level, capped at
  :data:`MAX_FILTERS` (nnU-Net: 32 and 320; on a CPU the plan starts at 16, which halves
  every level's width and roughly quarters the compute of a convolution, so that a 2-core machine
  trains a fold in under an hour).
* **Patch size**: the median shape at the target spacing; while one training iteration at batch
  size :data:`MIN_BATCH` would exceed the memory budget (the estimate of
  :func:`medseg.models.memory.training_memory_bytes`), the axis whose patch is largest relative to
  the median shape shrinks by its downsampling factor, and the topology is planned again.
* **Batch size**: at least :data:`MIN_BATCH`; it grows while the budget holds and one batch covers
  at most :data:`MAX_BATCH_SHARE` of the dataset's voxels (at the target spacing).

Where medseg differs from nnU-Net: nnU-Net's initial patch is a 256^3-voxel box in the aspect of
1 / spacing, clipped to the median shape, and its memory model counts the network's feature maps
(its reference budget is about 8 GB of GPU memory); medseg starts from the median shape and uses
its own calibrated estimate, with a budget per device (:data:`DEFAULT_MEMORY_GB`). nnU-Net also
requires an axis that is downsampled alone to hold 12 voxels; medseg applies the same 4-voxel rule
to every axis.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.errors import ConfigError
from medseg.models.memory import training_memory_bytes

ANISOTROPY_RATIO = 3.0  # an axis this many times coarser than the finest gets its 10th-percentile spacing
COARSE_AXIS_PERCENTILE = 10
MIN_FEATURE_MAP = 4  # voxels per axis a downsampled feature map keeps, at least
POOL_SPACING_RATIO = 2.0  # downsample (and use kernel 3 along) an axis only within this factor of the finest
BASE_FILTERS = {"cuda": 32, "cpu": 16}  # feature maps at full resolution, per device kind
MAX_FILTERS = 320
MIN_BATCH = 2
MAX_BATCH_SHARE = 0.05  # one batch covers at most this share of the dataset's voxels
NETWORK_PLAN_FILE = "network_plan.json"  # a run folder's record of what was planned and why
DEFAULT_MEMORY_GB = {"cuda": 8.0, "cpu": 2.0}  # the training budget per device kind (nnU-Net's reference: 8 GB)


@dataclass(frozen=True)
class Topology:
    """A U-Net's levels: per level its stride (the downsampling into it; level 0: 1) and
    convolution kernel size, per axis; ``divisor``: the total downsampling per axis."""

    strides: list[tuple[int, int, int]]
    kernel_sizes: list[tuple[int, int, int]]
    divisor: tuple[int, int, int]


@dataclass(frozen=True)
class NetworkPlan:
    """What the planner chose, and why (``reasons``, one line per decision).

    Attributes:
        target_spacing: mm per axis. patch_size: voxels per axis. batch_size: patches per iteration.
        filters: feature maps per level. strides, kernel_sizes: per level and axis.
        device: ``cpu`` or ``cuda``. memory_gb: the budget planned for.
        estimated_memory_gb: the estimate of one training iteration at ``batch_size``.
    """

    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    filters: list[int]
    strides: list[tuple[int, int, int]]
    kernel_sizes: list[tuple[int, int, int]]
    device: str
    memory_gb: float
    estimated_memory_gb: float
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serialisable form (tuples as lists)."""
        return asdict(self)


def target_spacing(spacings: np.ndarray) -> tuple[tuple[float, float, float], str]:
    """The planned spacing from the cases' spacings (N, 3) in mm, and the reason."""
    spacings = np.asarray(spacings, dtype=float).reshape(-1, 3)
    median = np.median(spacings, axis=0)
    coarse = int(np.argmax(median))
    ratio = median[coarse] / median.min()
    if ratio > ANISOTROPY_RATIO:
        chosen = median.copy()
        chosen[coarse] = np.percentile(spacings[:, coarse], COARSE_AXIS_PERCENTILE)
        why = (f"median spacing {_mm(median)}; axis {coarse} is {ratio:.2g}x coarser than the finest (> "
               f"{ANISOTROPY_RATIO:g}), so it gets its {COARSE_AXIS_PERCENTILE}th percentile, {chosen[coarse]:.3g} mm")
    else:
        chosen = median
        why = f"median spacing {_mm(median)} (no axis more than {ANISOTROPY_RATIO:g}x coarser than the finest)"
    return tuple(float(s) for s in chosen), why


def topology(spacing, patch_size) -> Topology:
    """The levels of a U-Net on ``patch_size`` voxels at ``spacing`` mm (module docstring's rules)."""
    current, size = [float(s) for s in spacing], [float(p) for p in patch_size]
    kernel = [3 if s / min(current) < POOL_SPACING_RATIO else 1 for s in current]
    strides, kernels = [(1, 1, 1)], []
    while True:
        fits = [a for a in range(3) if size[a] / 2 >= MIN_FEATURE_MAP]
        if not fits:
            break
        finest = min(current[a] for a in fits)
        pooled = [a for a in fits if current[a] / finest < POOL_SPACING_RATIO]
        kernel = [3 if k == 3 or current[a] / min(current) < POOL_SPACING_RATIO else 1 for a, k in enumerate(kernel)]
        kernels.append(tuple(kernel))
        strides.append(tuple(2 if a in pooled else 1 for a in range(3)))
        for a in pooled:
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append((3, 3, 3))  # the bottleneck
    divisor = tuple(math.prod(s[a] for s in strides) for a in range(3))
    return Topology(strides, kernels, divisor)


def planned_filters(levels: int, device: str) -> list[int]:
    """Feature maps per level: :data:`BASE_FILTERS` for the device, doubling, at most :data:`MAX_FILTERS`."""
    return [min(BASE_FILTERS[device] * 2 ** i, MAX_FILTERS) for i in range(levels)]


def planned_batch(filters: list[int], strides: list, patch_size, in_channels: int, out_channels: int,
                  dataset_voxels: float, memory_gb: float) -> tuple[int, str]:
    """The batch size for a network and patch: at least :data:`MIN_BATCH`, grown while one training
    iteration fits ``memory_gb`` and one batch covers at most :data:`MAX_BATCH_SHARE` of
    ``dataset_voxels``; and the reason."""
    budget = memory_gb * 2**30
    share_cap = max(MIN_BATCH, int(MAX_BATCH_SHARE * dataset_voxels // math.prod(patch_size)))
    batch = MIN_BATCH
    while batch + 1 <= share_cap and training_memory_bytes(filters, strides, patch_size, batch + 1, in_channels,
                                                            out_channels) <= budget:
        batch += 1
    limit = "the memory budget" if batch < share_cap else f"{MAX_BATCH_SHARE:.0%} of the dataset's voxels"
    return batch, (f"batch {batch}: at least {MIN_BATCH}, grown until {limit} ({dataset_voxels / 1e6:.3g} M voxels "
                   f"at the target spacing; {share_cap} patches would be {MAX_BATCH_SHARE:.0%})")


def _round_up(patch, divisor) -> tuple[int, int, int]:
    return tuple(int(math.ceil(p / d) * d) for p, d in zip(patch, divisor))


def _memory(topo: Topology, filters: list[int], patch, batch: int, in_channels: int, out_channels: int) -> int:
    return training_memory_bytes(filters, topo.strides, patch, batch, in_channels, out_channels)


def plan_network(fingerprint: dict, device: str = "cpu", memory_gb: float | None = None, *,
                 spacing=None, patch_size=None) -> NetworkPlan:
    """Plan the network for a dataset.

    Args:
        fingerprint: :func:`medseg.data.fingerprint.compute_fingerprint`'s dict (``cases`` with
            per-case ``spacing`` and ``shape``, ``modality``, ``labels``).
        device: ``cpu`` or ``cuda`` (the filters' start and the default budget).
        memory_gb: the training memory budget (GiB); default :data:`DEFAULT_MEMORY_GB` for the device.
        spacing: a target spacing (mm) to plan for instead of the planned one.
        patch_size: a patch (voxels) to plan the topology and batch for, kept as it is (not shrunk
            to the budget; it must be a multiple of the topology's downsampling).

    Returns:
        the plan, with a reason per decision.

    Raises:
        ConfigError: an unknown device, a budget that is not positive, or one that cannot hold a
            training iteration at batch size 2 on the smallest patch the topology allows.
    """
    if device not in BASE_FILTERS:
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(BASE_FILTERS)}", "--device")
    budget_gb = DEFAULT_MEMORY_GB[device] if memory_gb is None else float(memory_gb)
    if not budget_gb > 0:
        raise ConfigError(f"the memory budget must be positive, got {budget_gb:g} GB", "--memory-gb")
    budget = budget_gb * 2**30
    spacings, shapes = _case_geometry(fingerprint)
    if spacing is None:
        spacing, why_spacing = target_spacing(spacings)
    else:
        spacing, why_spacing = tuple(float(v) for v in spacing), "given"
    resampled = shapes * spacings / np.asarray(spacing)  # each case's shape at the target spacing
    median_shape = np.median(resampled, axis=0)
    total_voxels = float(np.sum(np.prod(resampled, axis=1)))
    in_ch, out_ch = fingerprint_channels(fingerprint)
    reasons = [f"target spacing {_mm(spacing)}: {why_spacing}"]

    if patch_size is not None:
        patch = tuple(int(p) for p in patch_size)
        topo = topology(spacing, patch)
        filters = planned_filters(len(topo.strides), device)
        reasons.append(f"patch {_vox(patch)}: given")
    else:
        patch = tuple(max(1, int(round(m))) for m in median_shape)
        topo = topology(spacing, patch)
        patch = _round_up(patch, topo.divisor)
        filters = planned_filters(len(topo.strides), device)
        reasons.append(f"patch starts at the median shape at the target spacing, {_vox(median_shape)}, rounded up "
                       f"to {_vox(patch)}")
    while patch_size is None and _memory(topo, filters, patch, MIN_BATCH, in_ch, out_ch) > budget:
        ratios = [p / m for p, m in zip(patch, median_shape)]
        order = sorted(range(3), key=lambda a: -ratios[a])
        axis = next((a for a in order if patch[a] - topo.divisor[a] >= MIN_FEATURE_MAP), None)
        if axis is None:
            raise ConfigError(f"a training iteration at batch size {MIN_BATCH} needs "
                              f"{_memory(topo, filters, patch, MIN_BATCH, in_ch, out_ch) / 2**30:.2f} GB even on "
                              f"patch {_vox(patch)}, more than the {budget_gb:g} GB budget: raise --memory-gb",
                              "--memory-gb")
        shrunk = list(patch)
        shrunk[axis] -= topo.divisor[axis]
        topo = topology(spacing, shrunk)
        patch = _round_up(shrunk, topo.divisor)
        filters = planned_filters(len(topo.strides), device)
    if patch_size is None:
        reasons.append(f"patch {_vox(patch)}: the largest, shrinking the axis largest relative to the median shape, "
                       f"whose training iteration at batch {MIN_BATCH} fits {budget_gb:g} GB")
    batch, why_batch = planned_batch(filters, topo.strides, patch, in_ch, out_ch, total_voxels, budget_gb)
    reasons.append(why_batch)
    reasons.append(f"{len(topo.strides)} levels: an axis is downsampled while its feature map keeps >= "
                   f"{MIN_FEATURE_MAP} voxels and its spacing is within {POOL_SPACING_RATIO:g}x of the finest; "
                   f"kernel 1 along an axis still coarser (total downsampling {_vox(topo.divisor)})")
    reasons.append(f"filters {filters}: {BASE_FILTERS[device]} at full resolution on {device}, doubling per level, "
                   f"at most {MAX_FILTERS}" + (" (nnU-Net starts at 32; on a CPU the plan starts at 16)"
                                                if device == "cpu" else ""))
    estimate = _memory(topo, filters, patch, batch, in_ch, out_ch) / 2**30
    return NetworkPlan(spacing, patch, batch, filters, topo.strides, topo.kernel_sizes, device, budget_gb,
                       estimate, reasons)


def fingerprint_channels(fingerprint: dict) -> tuple[int, int]:
    """The network's input channels (modalities) and output channels (classes, background included)."""
    return len(fingerprint["modality"]), max(int(k) for k in fingerprint["labels"]) + 1


def _case_geometry(fingerprint: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every case's spacing (mm) and shape (voxels), (cases, 3) each, from the fingerprint."""
    cases = list(fingerprint["cases"].values())
    return (np.array([c["spacing"] for c in cases], dtype=float), np.array([c["shape"] for c in cases], dtype=float))


def dataset_voxels(fingerprint: dict, spacing) -> float:
    """The dataset's voxels at ``spacing`` (mm): every case's volume in voxels after resampling."""
    spacings, shapes = _case_geometry(fingerprint)
    return float(np.sum(np.prod(shapes * spacings / np.asarray(spacing, dtype=float), axis=1)))


def _mm(values) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values) + " mm"


def _vox(values) -> str:
    return " x ".join(f"{float(v):.0f}" for v in values)
