"""The model directory: a self-contained, code-free package of a trained model.

Layout::

    MODEL_DIR/
      medseg_model.json   format version, medseg version, plan (preprocessing), network spec,
                          sliding-window defaults, training summary
      weights.pt          the network's state_dict (loaded with torch.load(weights_only=True))

``medseg_model.json`` records the SHA-256 of ``weights.pt``; loading checks it, so a swapped or
damaged weights file is refused, and ``weights_only=True`` refuses any pickled code payload.

Inference needs nothing else: not the training config, not the dataset.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg import __version__
from medseg.atomic import atomic_write_text, make_temporary_dir, replace_dir
from medseg.data.dataset import file_sha256
from medseg.errors import MedsegError, ModelError
from medseg.models.unet import NetworkSpec, build_unet
from medseg.plan import Plan
from medseg.checkpoint import load_checkpoint

FORMAT_VERSION = 1
META_FILE = "medseg_model.json"
WEIGHTS_FILE = "weights.pt"


@dataclass
class LoadedModel:
    """A model directory read back: the network (eval mode, on ``device``), its plan and metadata."""

    network: torch.nn.Module
    plan: Plan
    spec: NetworkSpec
    meta: dict


def save_model_dir(path: str | Path, network: torch.nn.Module, plan: Plan, spec: NetworkSpec,
                   extra: dict | None = None) -> Path:
    """Write a model directory atomically (a temporary folder swapped into place: a reader finds the
    old model or the new one, never none, :func:`medseg.atomic.replace_dir`), readable by the group
    as a plain ``mkdir`` would make it.

    Args:
        path: the target folder; an existing one is replaced only once the new one is complete.
        network: the trained network (its state_dict is saved on CPU).
        plan: preprocessing and patch geometry.
        spec: the network definition.
        extra: more JSON-serialisable metadata (e.g. validation Dice, run id).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_dir(path)
    try:
        state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        meta = {"format_version": FORMAT_VERSION, "medseg_version": __version__, "plan": plan.to_dict(),
                "network": spec.to_dict(), "checksums": {WEIGHTS_FILE: file_sha256(tmp / WEIGHTS_FILE)}, **(extra or {})}
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1))
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path




WEIGHTS_SLACK_BYTES = 1 << 20  # what torch.save adds beyond the tensors' bytes (pickle, zip records)


def _check_weights_size(weights: Path, network: torch.nn.Module) -> None:
    """Refuse a weights file that would unpack to more than the network's tensors take, before it is
    loaded: a small, compressed file can inflate to many GB in memory.

    Raises:
        ModelError: the archive's members would unpack to more than the network's state dict in
            bytes (with :data:`WEIGHTS_SLACK_BYTES` and 10 % to spare).
    """
    import zipfile
    if not zipfile.is_zipfile(weights):  # torch's legacy format is not compressed: its size is the file's
        return
    expected = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    allowed = int(expected * 1.1) + WEIGHTS_SLACK_BYTES
    with zipfile.ZipFile(weights) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > allowed:
        raise ModelError(f"the weights would unpack to {unpacked / 2**20:.1f} MB, but this network's tensors take "
                         f"{expected / 2**20:.1f} MB: the file is not this model's weights (refused before loading)",
                         weights)


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model directory and rebuild its network in eval mode on ``device``.

    Raises:
        ModelError: the folder or a file is missing, the metadata is not valid JSON, the format
            version is newer than this medseg understands, the weights' checksum does not match,
            the weights would unpack to more bytes than the network's tensors (checked before they
            are loaded), the weights file holds anything but tensors, or the weights do not fit the
            network.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError("model directory not found", path)
    for name in (META_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ModelError(f"incomplete model directory: {name} is missing", path)
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"not valid JSON ({e})", path / META_FILE) from None
    if not isinstance(meta, dict):
        raise ModelError(f"model metadata must be a JSON object, not {type(meta).__name__}", path / META_FILE)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"model format version {version!r} is not supported by medseg {__version__} "
                         f"(supports up to {FORMAT_VERSION}); upgrade medseg", path / META_FILE)
    try:
        plan = Plan.from_dict(meta["plan"])
        spec = NetworkSpec(**meta["network"])
        network = build_unet(spec)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, MedsegError) as e:
        raise ModelError(f"model metadata is incomplete or malformed ({type(e).__name__}: {str(e)[:200]})",
                         path / META_FILE) from None
    checksums = meta.get("checksums")
    expected = checksums.get(WEIGHTS_FILE) if isinstance(checksums, dict) else None
    if expected is None:
        raise ModelError(f"model metadata has no checksum for {WEIGHTS_FILE}", path / META_FILE)
    if file_sha256(path / WEIGHTS_FILE) != expected:
        raise ModelError("checksum mismatch: the file is not the one this model directory was exported with "
                         "(damaged or replaced)", path / WEIGHTS_FILE)
    _check_weights_size(path / WEIGHTS_FILE, network)
    try:
        state = load_checkpoint(path / WEIGHTS_FILE)
        network.load_state_dict(state)
    except Exception as e:  # pickle errors, unsafe payloads, shape mismatches
        raise ModelError(f"weights cannot be loaded safely ({type(e).__name__}: {str(e)[:300]})", path / WEIGHTS_FILE) from None
    network.to(device).eval()
    return LoadedModel(network=network, plan=plan, spec=spec, meta=meta)
