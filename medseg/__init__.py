"""medseg: 3D U-Net segmentation of CT/MRI volumes with a choice of normalization layer."""
__version__ = "0.1.0"
