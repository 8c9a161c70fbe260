"""Fine-tuning: a new run's network starts from a trained medseg model's weights.

Every tensor of the source model whose name and shape match the new network is copied; the others
(for example the output head of a model with another label count, or the levels of another
topology) keep their fresh initialization. The run records how many were loaded and skipped, and
warns, naming each, where the source was trained on other data: another target spacing, modality,
intensity normalization or label names. As nnU-Net's ``-pretrained_weights`` (MIC-DKFZ/nnUNet
#774, #1108, #2702), but from any medseg model directory or MLflow model URI.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from medseg.errors import MedsegError
from medseg.models.directory import load_model_dir
from medseg.plan import Plan
from medseg.tracking import resolve_model_uri


def plan_differences(source: Plan, target: Plan) -> list[str]:
    """What differs between the data a model was trained on (``source``) and a new run's (``target``),
    one phrase each (empty when nothing that changes the meaning of the weights differs)."""
    out = []
    if tuple(source.target_spacing) != tuple(target.target_spacing):
        out.append(f"target spacing {_mm(source.target_spacing)} (source) vs {_mm(target.target_spacing)} (this run)")
    if list(source.modality) != list(target.modality):
        out.append(f"modality {source.modality} vs {target.modality}")
    if (source.ct_clip, source.ct_mean, source.ct_std) != (target.ct_clip, target.ct_mean, target.ct_std):
        out.append("intensity normalization (CT window or foreground statistics)")
    if source.labels != target.labels:
        out.append(f"labels {source.labels} vs {target.labels}")
    return out


def initialize_from(network: torch.nn.Module, source: str, plan: Plan, tracking_uri: str | None = None,
                    log: Callable[[str], None] = lambda s: None) -> dict[str, str]:
    """Load the matching weights of the model ``source`` into ``network`` (in place).

    Args:
        network: the new run's freshly built network.
        source: a model directory, or an MLflow model URI (``models:/NAME@ALIAS``, ``runs:/ID/medseg_model``).
        plan: the new run's plan (compared with the source's).
        tracking_uri: the store an MLflow model URI refers to.
        log: where the summary and the warnings go.

    Returns:
        MLflow tags: ``init_from``, ``init_loaded`` and ``init_skipped`` (tensor counts) and
        ``init_plan_differs`` ("none" or the differences).

    Raises:
        MedsegError: the source cannot be found or loaded (as ``medseg predict -m`` would say), or not
            one convolution matches.
    """
    loaded = load_model_dir(resolve_model_uri(source, tracking_uri))
    theirs, ours = loaded.network.state_dict(), network.state_dict()
    matched = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    if not any(v.dim() > 1 for v in matched.values()):  # a bias or a norm's scale alone is no initialization
        raise MedsegError("no layer of this model matches the new network in name and shape: it cannot initialize "
                          "it (another architecture)", source)
    network.load_state_dict(matched, strict=False)
    skipped = sorted(k for k in ours if k not in matched)
    log(f"initialized from {source}: {len(matched)} of {len(ours)} tensors loaded"
        + (f", {len(skipped)} start fresh ({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''})"
           if skipped else ""))
    differences = plan_differences(loaded.plan, plan)
    for d in differences:
        log(f"warning: the model in --init-from was trained on other data: {d}")
    return {"init_from": source, "init_loaded": str(len(matched)), "init_skipped": str(len(skipped)),
            "init_plan_differs": "; ".join(differences) or "none"}


def _mm(values) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values) + " mm"
