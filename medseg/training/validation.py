"""Validation during and at the end of a run: sliding-window Dice on whole validation volumes.

A :class:`Validator` holds what every validation needs (network, preprocessed volumes, inferer,
plan, autocast mode, DDP rank info) and returns metrics as ``{MLflow key: value}`` dicts.

Axes: volumes and patches are (C, D, H, W) for one example and (N, C, D, H, W) for a batch, with
D, H, W the three spatial axes of the preprocessed RAS grid (voxels at ``plan.target_spacing`` mm).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from monai.transforms import CenterSpatialCrop, SpatialPad

from medseg.evaluation import per_class_metrics, summarize
from medseg.inference.sliding_window import predict_probabilities
from medseg.keys import (
    BATCH_DEPENDENCE_EVAL,
    BATCH_DEPENDENCE_TRAIN,
    FINAL_CASE_DICE,
    FINAL_DICE_MEAN,
    VAL_DICE_MEAN,
    mlflow_key,
)
from medseg.models.norms import batch_dependence, batch_statistics
from medseg.progress import ProgressFn, silent
from medseg.training import distributed as dist

BATCH_DEPENDENCE_PATCHES = 5  # one case alone vs inside a batch with 4 others


def case_dice_key(case_id: str, label: str, prefix: str = FINAL_CASE_DICE) -> str:
    """The MLflow metric key of one validation case's Dice for one label of the final model
    (``prefix/<case>/<label>``; another prefix for another way of inferring it)."""
    return f"{prefix}/{mlflow_key(case_id, allow_slash=False)}/{mlflow_key(label, allow_slash=False)}"


class Validator:
    """Sliding-window validation of ``network`` on the preprocessed validation ``volumes``.

    Args:
        network: the (unwrapped) network, on its device.
        volumes: dicts with ``image`` (C, D, H, W), ``label`` (1, D, H, W), ``case_id``.
        inferer: MONAI SlidingWindowInferer (:func:`~medseg.inference.sliding_window.make_inferer`).
        plan: the run's :class:`~medseg.plan.Plan` (classes, label names, spacing, patch size).
        amp: the effective autocast mode.
        info: DDP rank info; volumes are sharded over ranks and the metrics gathered on every rank.
    """

    def __init__(self, network, volumes: list[dict], inferer, plan, amp: str, info: dist.DistInfo):
        self.network, self.volumes, self.inferer, self.plan, self.amp, self.info = (
            network, volumes, inferer, plan, amp, info)
        self._latest: tuple[int, dict] | None = None  # (epoch, result) of the latest epoch validation

    def run(self, *, hd95: bool = False, progress: ProgressFn = silent, keep_first: bool = False,
            tta: bool = False) -> dict:
        """Sliding-window prediction of this rank's share of the volumes and its metrics; under DDP
        every rank gets all cases' metrics.

        Args:
            hd95: also compute HD95 (mm, on the preprocessed grid).
            keep_first: also return the first case's image, reference and prediction (for a plot).
            tta: mirroring test-time augmentation (8 flips).

        Returns:
            ``{"per_class": {label: {"dice", "hd95"}}, "cases": [{case_id, label: {...}}],
            "first": (image, reference, prediction) (D, H, W) numpy arrays, or None}``.
        """
        info = self.info
        val = self._score(self.volumes[info.rank::info.world_size], hd95, progress, keep_first, tta)
        if not info.enabled:
            return val
        cases = [c for part in dist.gather(val["cases"], info) for c in part]
        return {"per_class": summarize([{k: v for k, v in c.items() if k != "case_id"} for c in cases]),
                "cases": cases, "first": val["first"]}

    @torch.no_grad()
    def _score(self, volumes: list[dict], hd95: bool, progress: ProgressFn, keep_first: bool, tta: bool) -> dict:
        self.network.eval()
        rows, cases, first = [], [], None
        for vol in progress(volumes, "validate", len(volumes)):
            image = torch.as_tensor(vol["image"])[None].float()
            prob = predict_probabilities(self.network, image, self.inferer, amp=self.amp, tta=tta)
            pred = prob.argmax(1)[0].cpu().numpy()
            ref = np.asarray(torch.as_tensor(vol["label"])[0]).astype(np.int64)
            m = per_class_metrics(pred, ref, self.plan.num_classes, spacing=self.plan.target_spacing, hd95=hd95)
            rows.append(m)
            cases.append({"case_id": vol.get("case_id", ""), **m})
            if keep_first and first is None:
                first = (np.asarray(torch.as_tensor(vol["image"])[0]), ref, pred)
        return {"per_class": summarize(rows), "cases": cases, "first": first}

    def dice_by_label(self, val: dict) -> tuple[dict[str, float], float]:
        """Dice per foreground label name, and their mean, from a :meth:`run` result."""
        dice = {name: val["per_class"][k]["dice"] for k, name in self.plan.foreground_labels.items()}
        return dice, float(np.mean(list(dice.values())))

    def batch_stats_gap(self, dice_running: float, tta: bool = False) -> dict[str, float]:
        """Validate a batch-norm network again with batch statistics (of each sliding-window batch)
        instead of running averages; returns that Dice and the gap ``batch-stats - running-stats``."""
        with batch_statistics(self.network):
            val = self.run(tta=tta)
        dice = self.dice_by_label(val)[1]
        return {"val_dice_mean_batch_stats": dice, "bn_batch_stats_gap": dice - dice_running}

    def epoch_metrics(self, epoch: int, batch_stats: bool, progress: ProgressFn = silent) -> dict[str, float]:
        """Epoch ``epoch``'s validation: ``val_dice_<label>`` per foreground class, ``val_dice_mean``,
        the batch-statistics Dice and gap when ``batch_stats``, and ``validation_seconds`` (wall time)."""
        v0 = time.perf_counter()
        val = self.run(progress=progress)
        self._latest = (epoch, val)
        dice, mean = self.dice_by_label(val)
        row = {**{f"val_dice_{name}": d for name, d in dice.items()}, VAL_DICE_MEAN: mean}
        if batch_stats:
            row.update(self.batch_stats_gap(mean))
        row["validation_seconds"] = time.perf_counter() - v0
        return row

    def final_model_metrics(self, last_epoch: int, progress: ProgressFn = silent) -> dict[str, float]:
        """Metrics of the network as it is at the end of training (the final model, not the best
        epoch's, so free of the selection bias of choosing an epoch on these same cases):

        * ``final_case_dice/<case>/<label>``: Dice of every validation case and foreground label;
        * ``final_val_dice_mean``: their mean over cases and labels;
        * ``final_batch_dependence_train`` / ``_eval``: see :func:`~medseg.models.norms.batch_dependence`,
          on :data:`BATCH_DEPENDENCE_PATCHES` validation patches (centre crops, float32), in train
          and in eval mode.

        The validation of ``last_epoch`` is reused when this process ran it (the same weights).
        """
        if self._latest is not None and self._latest[0] == last_epoch:
            val = self._latest[1]
        else:  # resumed after the last epoch's validation
            val = self.run(progress=progress)
        out = self.case_metrics(val, FINAL_CASE_DICE, FINAL_DICE_MEAN)
        # on every rank: under DDP a synchronized batch norm's train-mode forward is a collective
        dep = batch_dependence(self.network, self.centre_patches(BATCH_DEPENDENCE_PATCHES))
        out[BATCH_DEPENDENCE_TRAIN], out[BATCH_DEPENDENCE_EVAL] = dep["train"], dep["eval"]
        return out

    def case_metrics(self, val: dict, case_prefix: str, mean_key: str) -> dict[str, float]:
        """A :meth:`run` result as MLflow metrics: ``<case_prefix>/<case>/<label>`` for every case and
        foreground label, and their mean under ``mean_key``."""
        out = {case_dice_key(case["case_id"], name, prefix=case_prefix): case[k]["dice"]
               for case in val["cases"] for k, name in self.plan.foreground_labels.items()}
        out[mean_key] = self.dice_by_label(val)[1]
        return out

    def centre_patches(self, n: int) -> torch.Tensor:
        """(n, C, *patch_size) centre crops (zero-padded where smaller) of the first n validation
        images; with fewer than n images, the batch is filled with mirrored, intensity-scaled copies
        of them (other statistics than the first patch's, so batch dependence can still show)."""
        size = list(self.plan.patch_size)
        crop, pad = CenterSpatialCrop(size), SpatialPad(size)
        crops = [torch.as_tensor(pad(crop(torch.as_tensor(v["image"]))), dtype=torch.float32)
                 for v in self.volumes[:n]]
        base = len(crops)
        for k in range(n - base):  # a validation fold of fewer than n cases
            copy = torch.flip(crops[k % base], dims=(1 + k % 3,))
            crops.append(copy * (1.5 + 0.5 * k))
        return torch.stack(crops)
