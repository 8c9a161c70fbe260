"""A config's ``auto`` values resolved from the dataset at the start of a run: the network
(``model.filters``, ``model.strides``, ``model.kernel_size``), the patch and target spacing a planned
network comes with when the config leaves them null, and ``train.batch_size`` (see
:mod:`medseg.models.planner`). The resolved config is what the run records (its ``config.yaml``),
so a resumed run does not plan again.
"""
from __future__ import annotations

import torch

from medseg.config import AUTO, Config
from medseg.models.planner import (NetworkPlan, dataset_voxels, fingerprint_channels, plan_network, planned_batch,
                                   planned_filters)


def resolve_auto(cfg: Config, fingerprint: dict, device: torch.device) -> tuple[Config, NetworkPlan | None]:
    """``cfg`` with every ``auto`` replaced by the planner's choice for ``device``, and the plan
    (None when nothing was ``auto``).

    * ``strides: auto`` (with ``filters: auto``): the planned levels, kernels and filters; the
      planned patch and target spacing where ``sampling.patch_size`` / ``preprocess.target_spacing``
      are null (a given patch gets its own topology; a given spacing is planned for).
    * ``filters: auto`` with given strides: the planned filters for that many levels.
    * ``train.batch_size: auto``: the planned batch for the network and patch.

    Raises:
        ConfigError: the memory budget cannot hold a training iteration (from the planner), or a
            given patch is not a multiple of the planned topology's downsampling.
    """
    m, t = cfg.model, cfg.train
    if not m.planned and t.batch_size != AUTO:
        return cfg, None
    kind = "cuda" if device.type == "cuda" else "cpu"
    plan = plan_network(fingerprint, kind, m.plan_memory_gb, spacing=cfg.preprocess.target_spacing,
                        patch_size=cfg.sampling.patch_size)
    doc = cfg.model_dump(mode="json")
    if m.strides == AUTO:
        doc["model"].update(filters=plan.filters, strides=[list(s) for s in plan.strides],
                            kernel_size=[list(k) for k in plan.kernel_sizes])
        doc["sampling"]["patch_size"] = list(plan.patch_size)
        doc["preprocess"]["target_spacing"] = list(plan.target_spacing)
    elif m.filters == AUTO:
        doc["model"]["filters"] = planned_filters(len(m.strides), kind)
    if t.batch_size == AUTO:
        if m.strides == AUTO:
            doc["train"]["batch_size"] = plan.batch_size
        else:
            patch = cfg.sampling.patch_size or plan.patch_size
            batch, why = planned_batch(doc["model"]["filters"], list(m.strides), patch, *fingerprint_channels(fingerprint),
                                       dataset_voxels(fingerprint, plan.target_spacing), plan.memory_gb)
            doc["train"]["batch_size"] = batch
            plan.reasons.append(why + " (for the config's network)")
    return Config.model_validate(doc), plan
