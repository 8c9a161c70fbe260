"""medseg.models.memory: the training memory estimate."""


def test_the_memory_estimate_is_below_what_an_iteration_allocates():
    """The estimate must refuse only what cannot fit: it stays below the measured allocation of the
    calibration (357 MB for DynUNet 16-128, patch 40 x 56 x 40, batch 2) and grows with the patch."""
    from medseg.models.memory import training_memory_bytes
    small = training_memory_bytes([16, 32, 64, 128], [1, 2, 2, 2], (40, 56, 40), 2, 1, 3)
    assert small < 357 * 2**20
    assert training_memory_bytes([16, 32, 64, 128], [1, 2, 2, 2], (80, 112, 80), 2, 1, 3) > 7 * small
