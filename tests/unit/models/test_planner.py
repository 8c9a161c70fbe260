"""medseg.models.planner: the planned network on synthetic fingerprints, checked against topologies
worked out by hand from the rules (module docstring): downsample an axis while its feature map
keeps >= 4 voxels (so it needs >= 8 before) and its spacing is within 2x of the finest still
downsampled; kernel 1 along an axis more than 2x coarser than the finest; the bottleneck 3."""
import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.models.planner import MAX_FILTERS, plan_network, target_spacing, topology

HUGE = 1000.0  # GB: a budget that never shrinks the patch, to test the topology alone


def _fingerprint(spacing, shape, n=40, modality="MRI", labels=2, spacings=None):
    cases = {f"c{i:03d}": {"spacing": list(spacings[i] if spacings is not None else spacing), "shape": list(shape)}
             for i in range(n)}
    return {"modality": [modality], "labels": {str(k): f"l{k}" for k in range(labels + 1)}, "cases": cases}


def test_isotropic_1mm():
    """128^3 at 1 mm: 128 -> 64 -> 32 -> 16 -> 8 -> 4 on every axis: 5 downsamplings, 6 levels, all
    kernels 3; filters 32 doubling, capped at 320 from the 5th level (32 * 2^4 = 512 > 320)."""
    plan = plan_network(_fingerprint((1, 1, 1), (128, 128, 128)), "cuda", HUGE)
    assert plan.target_spacing == (1.0, 1.0, 1.0) and plan.patch_size == (128, 128, 128)
    assert plan.strides == [(1, 1, 1)] + [(2, 2, 2)] * 5
    assert plan.kernel_sizes == [(3, 3, 3)] * 6
    assert plan.filters == [32, 64, 128, 256, 320, 320] and max(plan.filters) == MAX_FILTERS


def test_thick_slice_mri_0_7_x_0_7_x_5mm():
    """256 x 256 x 24 at 0.7 x 0.7 x 5 mm. Levels (spacing before the level's downsampling):
    0: (0.7, 0.7, 5): z is 7x coarser -> kernel (3, 3, 1); only x, y within 2x -> stride into 1 (2, 2, 1);
    1: (1.4, 1.4, 5): z 3.6x -> kernel (3, 3, 1), stride (2, 2, 1);
    2: (2.8, 2.8, 5): z 1.8x -> kernel 3 from here on; every axis within 2x, z has 24 >= 8: stride 2;
    3: (5.6, 5.6, 10), sizes (32, 32, 12): stride 2;
    4: sizes (16, 16, 6): z cannot (6 < 8): stride (2, 2, 1);
    5: sizes (8, 8, 6): stride (2, 2, 1); 6: sizes (4, 4, 6): nothing can: the bottleneck."""
    plan = plan_network(_fingerprint((0.7, 0.7, 5.0), (256, 256, 24)), "cuda", HUGE)
    assert plan.strides == [(1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 2, 1)]
    assert plan.kernel_sizes == [(3, 3, 1), (3, 3, 1)] + [(3, 3, 3)] * 5
    assert plan.patch_size == (256, 256, 24)  # divisible by (64, 64, 4)


def test_thick_slices_get_the_10th_percentile_of_the_coarse_axis():
    spacings = np.array([[0.7, 0.7, s] for s in np.linspace(3.0, 7.0, 40)])
    spacing, why = target_spacing(spacings)
    assert spacing[:2] == (0.7, 0.7) and spacing[2] == pytest.approx(np.percentile(spacings[:, 2], 10))
    assert "10th percentile" in why
    iso = target_spacing(np.array([[1.0, 1.0, 2.9]] * 5))[0]  # 2.9x: not "much coarser", the median stays
    assert iso == (1.0, 1.0, 2.9)


def test_ct_4_x_4_x_2_5mm():
    """128 x 128 x 96 at 4 x 4 x 2.5 mm: x, y are 1.6x the finest, within 2x, so every axis is
    downsampled and every kernel is 3: sizes 128/96 -> 64/48 -> 32/24 -> 16/12 -> 8/6; then z
    (6 < 8) stops and x, y go once more to 4."""
    plan = plan_network(_fingerprint((4.0, 4.0, 2.5), (128, 128, 96), modality="CT", labels=5), "cuda", HUGE)
    assert plan.target_spacing == (4.0, 4.0, 2.5)
    assert plan.strides == [(1, 1, 1)] + [(2, 2, 2)] * 4 + [(2, 2, 1)]
    assert plan.kernel_sizes == [(3, 3, 3)] * 6


def test_a_tiny_20_voxel_volume():
    """20^3 at 1 mm: 20 -> 10 -> 5, and 5 < 8 stops: 2 downsamplings, 3 levels; 20 is a multiple of 4."""
    plan = plan_network(_fingerprint((1, 1, 1), (20, 20, 20), n=10), "cuda", HUGE)
    assert plan.strides == [(1, 1, 1), (2, 2, 2), (2, 2, 2)] and plan.kernel_sizes == [(3, 3, 3)] * 3
    assert plan.patch_size == (20, 20, 20) and plan.filters == [32, 64, 128]


def test_hippocampus_like_data_gives_nnunets_task04_plan():
    """200 cases of 36 x 50 x 35 voxels at 1 mm: nnU-Net's plan for Task04 (MIC-DKFZ/nnUNet#148:
    patch 40 x 56 x 40, three downsamplings, 32-256 filters); the batch is the 5 % rule's:
    5 % of 200 * 36 * 50 * 35 voxels / (40 * 56 * 40) = 7.03 -> 7 (nnU-Net's 9 is for 260 cases)."""
    plan = plan_network(_fingerprint((1, 1, 1), (36, 50, 35), n=200), "cuda")
    assert plan.patch_size == (40, 56, 40) and plan.filters == [32, 64, 128, 256]
    assert plan.strides == [(1, 1, 1)] + [(2, 2, 2)] * 3 and plan.batch_size == 7
    cpu = plan_network(_fingerprint((1, 1, 1), (36, 50, 35), n=200), "cpu")
    assert cpu.filters == [16, 32, 64, 128] and any("starts at 16" in r for r in cpu.reasons)


def test_the_budget_shrinks_the_patch_and_bounds_the_batch():
    fp = _fingerprint((1, 1, 1), (160, 160, 96), n=400)
    roomy, tight = plan_network(fp, "cuda", HUGE), plan_network(fp, "cuda", 1.0)
    assert np.prod(tight.patch_size) < np.prod(roomy.patch_size)
    assert tight.estimated_memory_gb <= 1.0 and tight.batch_size >= 2
    assert all(p % d == 0 for p, d in zip(tight.patch_size, np.prod(np.array(tight.strides), axis=0)))
    small = _fingerprint((1, 1, 1), (40, 40, 40), n=3)  # 5 % of 3 cases is less than one patch: still batch 2
    assert plan_network(small, "cuda", HUGE).batch_size == 2
    with pytest.raises(ConfigError, match="raise --memory-gb"):
        plan_network(fp, "cuda", 1e-4)
    with pytest.raises(ConfigError, match="unknown device"):
        plan_network(fp, "tpu")


def test_topology_is_a_pure_function_of_spacing_and_patch():
    t = topology((1.0, 1.0, 3.0), (64, 64, 16))
    assert t.divisor == tuple(int(np.prod([s[a] for s in t.strides])) for a in range(3))
    assert len(t.kernel_sizes) == len(t.strides) and t.kernel_sizes[-1] == (3, 3, 3)
