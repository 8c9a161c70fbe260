"""The 3D U-Net: MONAI's DynUNet (the nnU-Net architecture, Isensee et al. 2021) with a chosen norm."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from monai.networks.nets import DynUNet

from medseg.config import ModelConfig
from medseg.models.onednn_conv import route_single_examples_to_onednn
from medseg.norm_registry import REGISTRY, norm_spec

_DEFAULT = ModelConfig()  # the defaults are the config schema's, written once there


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild the network (saved in the model directory).

    Defaults are those of the ``model`` config section (:class:`medseg.config.ModelConfig`).

    Attributes:
        in_channels: image channels (modalities).
        out_channels: classes including background.
        filters: channels per level, e.g. ``[16, 32, 64, 128]``.
        strides: per level (int or per-axis triple); the first is usually 1.
        kernel_size: convolution kernel size (voxels): one odd int for every level and axis, or per
            level a triple (a planned network: 1 along an axis much coarser than the others).
        norm: ``instance | group | layer | batch | none``.
        num_groups: groups for ``group``.
        deep_supervision: also output (upsampled) predictions of the lower decoder levels in training.
        res_block: residual blocks instead of plain conv-norm-act pairs.
    """

    in_channels: int
    out_channels: int
    filters: list[int] = field(default_factory=lambda: list(_DEFAULT.filters))
    strides: list = field(default_factory=lambda: list(_DEFAULT.strides))
    kernel_size: int | list = _DEFAULT.kernel_size
    norm: str = _DEFAULT.norm
    num_groups: int = _DEFAULT.num_groups
    deep_supervision: bool = _DEFAULT.deep_supervision
    res_block: bool = _DEFAULT.res_block

    @classmethod
    def from_config(cls, model: ModelConfig, in_channels: int, out_channels: int,
                    norm: str | None = None) -> NetworkSpec:
        """The network the ``model`` config section describes, for ``in_channels`` modalities and
        ``out_channels`` classes (background included); ``norm`` overrides the section's norm."""
        return cls(in_channels=in_channels, out_channels=out_channels, filters=list(model.filters),
                   strides=[list(s) if isinstance(s, tuple) else s for s in model.strides],
                   kernel_size=[list(k) for k in model.kernel_size] if isinstance(model.kernel_size, list)
                   else model.kernel_size, norm=norm or model.norm, num_groups=model.num_groups,
                   deep_supervision=model.deep_supervision, res_block=model.res_block)

    @property
    def deep_supr_num(self) -> int:
        """Extra deep-supervision heads: the two decoder levels below the top (fewer for shallow nets)."""
        return max(1, min(2, len(self.filters) - 2))

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored in medseg_model.json)."""
        return asdict(self)


def build_unet(spec: NetworkSpec, seed: int | None = None) -> torch.nn.Module:
    """Build the DynUNet for ``spec``.

    With ``seed``, the initial weights depend on the seed alone (drawn after ``torch.manual_seed(seed)``
    in a forked RNG, which leaves the global one as it was). Norm layers draw nothing (their affines
    start at 1 and 0), so every norm gets the same initial convolution weights for one seed.

    Input (N, in_channels, D, H, W) with each spatial size a multiple of the product of the
    strides; output logits (N, out_channels, D, H, W). With deep supervision, in training mode
    the output is (N, 1 + deep_supr_num, out_channels, D, H, W). Its 3D convolutions send a
    single float32 CPU example through oneDNN (:mod:`medseg.models.onednn_conv`).

    Raises:
        ConfigError: unknown norm, or channel counts incompatible with ``num_groups``.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_unet(spec)
    norm = norm_spec(spec.norm, list(spec.filters), spec.num_groups)
    n = len(spec.filters)
    kernels = list(spec.kernel_size) if isinstance(spec.kernel_size, list) else [spec.kernel_size] * n
    net = DynUNet(
        spatial_dims=3, in_channels=spec.in_channels, out_channels=spec.out_channels, kernel_size=kernels,
        strides=list(spec.strides), upsample_kernel_size=list(spec.strides)[1:], filters=list(spec.filters),
        norm_name=norm, deep_supervision=spec.deep_supervision, deep_supr_num=spec.deep_supr_num,
        res_block=spec.res_block,
    )
    if REGISTRY[spec.norm].identity:
        _remove_norms(net)
    return route_single_examples_to_onednn(net)


_NORM_LAYERS = (torch.nn.modules.instancenorm._InstanceNorm, torch.nn.modules.batchnorm._BatchNorm,
                torch.nn.GroupNorm)


def _remove_norms(net: torch.nn.Module) -> None:
    """Replace every normalization layer by an identity (a registry norm with ``identity``)."""
    for name, child in list(net.named_children()):
        if isinstance(child, _NORM_LAYERS):
            setattr(net, name, torch.nn.Identity())
        else:
            _remove_norms(child)
