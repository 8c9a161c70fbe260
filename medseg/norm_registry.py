"""The normalization registry: every norm medseg can build, in one table (torch-free, so the config
schema and the command-line help read it without importing torch).

Adding a norm is one :class:`Norm` entry in :data:`REGISTRY` (plus its test): the config schema
(``model.norm``), the CLI help, the sweep, the report's order, the network builder
(:func:`medseg.models.norms.norm_spec`) and the training run (which asks
:attr:`Norm.batch_statistics` whether to use SyncBatchNorm and to measure the train/test gap) all
read it.

Axes: a normalization layer sees (N, C, D, H, W): N examples, C channels, D, H, W spatial voxels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from medseg.errors import ConfigError

EPS = 1e-5  # every norm's epsilon (added to the variance)


@dataclass(frozen=True)
class Norm:
    """One normalization layer.

    Attributes:
        name: the value of ``model.norm`` (also a tag and a column of the study's report).
        monai_name: the MONAI ``Norm`` factory name DynUNet builds it from (``instance | batch | group``).
        options: keyword arguments of that MONAI layer (besides the channel count).
        batch_statistics: it normalizes with statistics pooled over the batch (N): its output depends on
            the other examples in training mode, it keeps running averages for eval mode, and under
            DDP it becomes SyncBatchNorm.
        groups: for MONAI ``group``: a fixed number of groups (layer norm: 1), or ``None`` for the
            config's ``model.num_groups``.
        identity: the layers are replaced by identities after building (no normalization).
        reference: where the method comes from.
    """

    name: str
    monai_name: str
    options: dict = field(default_factory=dict)
    batch_statistics: bool = False
    groups: int | None = None
    identity: bool = False
    reference: str = ""


REGISTRY: dict[str, Norm] = {n.name: n for n in (
    Norm("instance", "instance", {"affine": True, "eps": EPS, "track_running_stats": False},
         reference="Ulyanov et al. 2016: per example and channel over (D, H, W); no running statistics"),
    Norm("group", "group", {"affine": True, "eps": EPS},
         reference="Wu & He, ECCV 2018: per example and group of channels over (C/G, D, H, W)"),
    Norm("layer", "group", {"affine": True, "eps": EPS}, groups=1,
         reference="Ba et al. 2016: group norm with one group, per example over (C, D, H, W)"),
    Norm("batch", "batch", {"affine": True, "eps": EPS, "momentum": 0.1}, batch_statistics=True,
         reference="Ioffe & Szegedy 2015: per channel over (N, D, H, W), running averages in eval mode"),
    # built as instance norm so that the network's shapes match the others, then replaced by identities
    Norm("none", "instance", {"affine": True, "eps": EPS, "track_running_stats": False}, identity=True,
         reference="no normalization: the study's baseline"),
)}

NORMS: tuple[str, ...] = tuple(REGISTRY)
"""The norm names, in the order tables and plots show them."""


def norm_spec(name: str, channels: list[int], num_groups: int = 8) -> tuple[str, dict]:
    """The MONAI ``norm_name`` tuple for ``name``, checked against every normalized layer's channels.

    Args:
        name: one of :data:`NORMS`.
        channels: channel count of every layer that gets a norm (the U-Net's filters).
        num_groups: groups for ``group``.

    Raises:
        ConfigError: unknown name, or a channel count not divisible by ``num_groups``.
    """
    if name not in REGISTRY:
        raise ConfigError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}", "model.norm")
    norm = REGISTRY[name]
    options = dict(norm.options)
    if norm.monai_name == "group":
        groups = norm.groups or num_groups
        bad = sorted({c for c in channels if c % groups})
        if bad:
            raise ConfigError(f"norm={name} with {groups} groups needs every normalized layer's channel count to be "
                              f"divisible by {groups}; these are not: {bad} (filters {channels}). Choose num_groups "
                              f"dividing all of them, or change model.filters.", "model.num_groups")
        options["num_groups"] = groups
    return (norm.monai_name, options)
