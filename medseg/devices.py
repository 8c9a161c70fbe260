"""Which torch device a command runs on: one check, shared by training, inference and the CLI."""
from __future__ import annotations

import torch

from medseg.errors import ConfigError


def resolve_device(name: str | torch.device, key: str = "--device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` as given.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        key: the option or config key the name came from (named in errors).

    Raises:
        ConfigError: an unknown device name, CUDA without a CUDA GPU, or ``cuda:N`` past the last GPU.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {str(name)[:40]!r}; use auto, cpu, cuda or cuda:N", key) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device.type!r} is not supported; use auto, cpu, cuda or cuda:N", key)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA requested but no CUDA GPU is available; use cpu (or auto)", key)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"there is no GPU {device.index} ({torch.cuda.device_count()} visible)", key)
    return device


COMPILE_MIN_ITERATIONS = 20_000
"""``train.compile: auto`` compiles a CUDA run of at least this many iterations. On one H200 the
Hippocampus recipe's bare bf16 step took 0.010 s and 0.008 s compiled (``benchmarks/fast_path.py
--device cuda``, issue 25), so compiling saves about 0.002 s per iteration, and 20,000 iterations
(about 3 minutes of steps) repay the 30-60 s TorchInductor takes to compile. On CPU, auto does not
compile (compilation took about 25 s there for a 10-13 % faster step)."""


def effective_compile(setting: bool | str, device: torch.device, iterations: int) -> tuple[bool, str]:
    """Whether a run compiles its training step, and why (for the run's tags).

    Args:
        setting: ``train.compile``: True, False or ``"auto"``.
        device: the training device.
        iterations: the run's epochs x iterations per epoch.
    """
    if setting is True or setting is False:
        return setting, "train.compile is set"
    import shutil

    from medseg.config import inductor_compiler
    cxx = inductor_compiler()
    if device.type != "cuda":
        return False, "auto: not on CPU"
    if not shutil.which(cxx):
        return False, f"auto: no C++ compiler ({cxx}) for TorchInductor"
    if iterations < COMPILE_MIN_ITERATIONS:
        return False, f"auto: {iterations} iterations, fewer than the {COMPILE_MIN_ITERATIONS} that repay compiling"
    return True, f"auto: a CUDA run of {iterations} iterations (at least {COMPILE_MIN_ITERATIONS})"
