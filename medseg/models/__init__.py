"""Model: the U-Net factory and the norm registry."""
from medseg.norm_registry import NORMS, norm_spec
from medseg.models.unet import NetworkSpec, build_unet

__all__ = ["NORMS", "norm_spec", "NetworkSpec", "build_unet"]
