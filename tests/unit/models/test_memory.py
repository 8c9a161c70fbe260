"""medseg.models.memory: the training memory estimate."""


def test_the_memory_estimate_is_below_what_an_iteration_allocates():
    """The estimate must refuse only what cannot fit: it stays below the measured allocation of the
    calibration (357 MB for DynUNet 16-128, patch 40 x 56 x 40, batch 2) and grows with the patch."""
    from medseg.models.memory import training_memory_bytes
    small = training_memory_bytes([16, 32, 64, 128], [1, 2, 2, 2], (40, 56, 40), 2, 1, 3)
    assert small < 357 * 2**20
    assert training_memory_bytes([16, 32, 64, 128], [1, 2, 2, 2], (80, 112, 80), 2, 1, 3) > 7 * small


def test_free_memory_is_psutils_and_peak_memory_counts_macos_bytes(monkeypatch):
    import resource
    import types

    import psutil
    import torch

    from medseg.models import memory
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=12345 * 2**20))
    assert memory.available_memory_bytes(torch.device("cpu")) == 12345 * 2**20
    usage = types.SimpleNamespace(ru_maxrss=512 * 2**20)  # 512 MiB in bytes (macOS) or 512 GiB in KiB (Linux)
    monkeypatch.setattr(resource, "getrusage", lambda who: usage)
    monkeypatch.setattr(memory, "MAXRSS_BYTES_PER_UNIT", 1)  # as on macOS
    assert memory.peak_memory_mb(torch.device("cpu")) == 512
    monkeypatch.setattr(memory, "MAXRSS_BYTES_PER_UNIT", 1024)  # as on Linux
    assert memory.peak_memory_mb(torch.device("cpu")) == 512 * 1024
    import sys
    assert (sys.platform == "darwin") == (memory.MAXRSS_BYTES_PER_UNIT == 1)
