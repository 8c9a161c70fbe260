"""medseg: 3D U-Net segmentation of CT/MRI volumes with a choice of normalization layer."""
__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name):  # lazy, so `import medseg` stays light and free of import cycles
    if name == "Segmenter":
        from medseg.inference.segmenter import Segmenter
        return Segmenter
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
