"""medseg.precision: which autocast a device gets."""
import os

import torch

from medseg.precision import autocast, effective_amp, native_cpu_bf16


def test_effective_amp_on_cpu():
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    native = native_cpu_bf16()
    if flags:
        assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert effective_amp("cpu", "bf16") == ("bf16" if native else "none")
    assert effective_amp("cpu", "fp16") == "none" and effective_amp("cpu", "none") == "none"
    conv = torch.nn.Conv3d(1, 2, 3)
    with autocast(torch.device("cpu"), "bf16"):
        y = conv(torch.randn(1, 1, 8, 8, 8))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)


def test_compile_auto_is_on_only_for_long_cuda_runs(monkeypatch):
    import torch

    from medseg.devices import COMPILE_MIN_ITERATIONS, effective_compile
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setenv("CXX", "sh")  # a compiler that is on PATH
    assert effective_compile("auto", cuda, COMPILE_MIN_ITERATIONS)[0] is True
    assert effective_compile("auto", cuda, COMPILE_MIN_ITERATIONS - 1) == (
        False, f"auto: {COMPILE_MIN_ITERATIONS - 1} iterations, fewer than the {COMPILE_MIN_ITERATIONS} that repay compiling")
    assert effective_compile("auto", cpu, 10 ** 6) == (False, "auto: not on CPU")
    assert effective_compile(True, cpu, 1) == (True, "train.compile is set")
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert effective_compile("auto", cuda, 10 ** 6)[0] is False
