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
