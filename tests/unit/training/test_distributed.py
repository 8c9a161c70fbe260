"""medseg.training.distributed: how ranks share out the patch stream (torchrun itself:
tests/scenarios/test_distributed.py)."""
from medseg.training.distributed import DistInfo, rank_indices


def test_ranks_share_out_each_iteration_s_patches():
    per_epoch, bs = 24, 3  # 4 iterations of 2 ranks x 3 patches
    parts = [rank_indices(1, per_epoch, 0, bs, DistInfo(r, 2)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(24, 48)) and not set(parts[0]) & set(parts[1])
    assert parts[1][:3] == [27, 28, 29]  # iteration 0: rank 0 takes 24-26, rank 1 27-29
    assert rank_indices(1, per_epoch, 2, bs, DistInfo(1, 2)) == parts[1][6:]  # resume at iteration 2
    assert rank_indices(0, 8, 1, 2, DistInfo()) == list(range(2, 8))  # one process: sequential
