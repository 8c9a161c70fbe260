"""Batch norm's inference statistics, measured three ways on the final network of a run.

A batch-norm network trains with the statistics of each batch and, in eval mode, infers with
running averages of them. Where its validation Dice falls short of instance norm's, this tells
whether the weights or the inference statistics are to blame:

* ``running`` (a): the running averages, as medseg infers by default (``final_case_dice``);
* ``window`` (b): every sliding window normalized by its own statistics: one window per forward
  pass, batch-norm layers with batch (train-mode) statistics, running averages not updated. At
  batch size 1 this is exactly the computation instance norm does at inference (statistics per
  channel over (D, H, W) of one example), with batch norm's weights;
* ``precise`` (c): running statistics re-estimated after training from the final weights over the
  run's first :data:`PRECISE_BN_PATCHES` training patches (all of them if it trained on fewer), at
  the run's batch size ("precise BN", Wu & Johnson
  2021, :func:`medseg.models.norms.precise_batch_norm`).

Axes: patches (N, C, D, H, W), as in training.
"""
from __future__ import annotations

import copy

import torch

from medseg.keys import BN_MODE_CASE_DICE, BN_MODE_DICE_MEAN, PRECISE_BN_PATCHES
from medseg.models.norms import batch_statistics, precise_batch_norm
from medseg.progress import ProgressFn, silent
from medseg.training.validation import Validator

def training_batches(stream, batch_size: int, n_patches: int = PRECISE_BN_PATCHES, augmentation=None,
                     device: torch.device | None = None):
    """The first ``n_patches`` patches of a run's training stream as (batch_size, C, D, H, W) float32
    image batches (the last one smaller if ``batch_size`` does not divide ``n_patches``), exactly as
    the run drew them (the stream is a function of (seed, index)). ``augmentation`` is the run's
    :class:`~medseg.training.patch_stream.DeviceAugmentation` when augmentation runs on the device
    (``device``), as in training."""
    for start in range(0, n_patches, batch_size):
        items = [d for i in range(start, min(start + batch_size, n_patches)) for d in _as_list(stream[i])]
        image = torch.stack([torch.as_tensor(d["image"], dtype=torch.float32) for d in items])
        if augmentation is not None:
            image = image.to(device)
            label = torch.stack([torch.as_tensor(d["label"]) for d in items]).to(device)
            image, _ = augmentation(image, label, [d["index"] for d in items])
        yield image.float()


def _as_list(data):
    return data if isinstance(data, list) else [data]


def batch_norm_modes(validator: Validator, batches, progress: ProgressFn = silent) -> dict[str, float]:
    """Validation Dice of the validator's (batch-norm) network with ``window`` and ``precise``
    statistics (mode ``running`` is :meth:`Validator.final_model_metrics`).

    Args:
        validator: the run's validator; its network and running averages are left as they are.
        batches: training image batches for the precise statistics (:func:`training_batches`).

    Returns:
        ``{BN_MODE_CASE_DICE[mode]/<case>/<label>: Dice}`` for every validation case and foreground
        label, and ``BN_MODE_DICE_MEAN[mode]``, for mode in ``window``, ``precise``.
    """
    network = validator.network
    one_window = copy.copy(validator.inferer)
    one_window.sw_batch_size = 1
    out: dict[str, float] = {}
    with batch_statistics(network):
        window = Validator(network, validator.volumes, one_window, validator.plan, validator.amp, validator.info)
        out.update(window.case_metrics(window.run(progress=progress), BN_MODE_CASE_DICE["window"],
                                       BN_MODE_DICE_MEAN["window"]))
    precise_net = precise_batch_norm(network, batches)
    precise = Validator(precise_net, validator.volumes, validator.inferer, validator.plan, validator.amp, validator.info)
    out.update(precise.case_metrics(precise.run(progress=progress), BN_MODE_CASE_DICE["precise"],
                                    BN_MODE_DICE_MEAN["precise"]))
    return out
