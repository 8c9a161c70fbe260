"""A trained model as an MLflow Model (the ``python_function`` flavor, logged as "models from code",
MLflow >= 2.12): ``mlflow.pyfunc.load_model(uri).predict(...)``, ``mlflow models serve`` and the
Model Registry work with it, and no code is pickled.

The logged model holds the model directory (weights, plan, network spec; see
:mod:`medseg.models.directory`) as its artifact ``model_dir``, and the code file
``medseg/inference/mlflow_model_code.py``, which names :class:`MedsegPyfuncModel`. Loading it runs
:meth:`MedsegPyfuncModel.load_context`, which reads the model directory with medseg's own loader
(weights only, SHA-256 checked). medseg must be installed where the model is loaded or served.

Axes: an input volume is (X, Y, Z) (or (X, Y, Z, C) for several channels), the voxel axes of the
image file it came from, with the 4x4 ``affine`` mapping voxel indices to world mm (nibabel's
RAS+ convention); the labels come back on the same (X, Y, Z) grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import Schema, TensorSpec

MODEL_DIR_ARTIFACT = "model_dir"  # the model directory inside the logged model's artifacts
LOGGED_MODEL_NAME = "medseg_model"  # the logged model's name in its run (runs:/<run id>/medseg_model)
CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")
IMAGE, AFFINE = "image", "affine"  # the input's keys


def signature(in_channels: int) -> ModelSignature:
    """The input and output schema: ``image`` float32 (X, Y, Z) (or (X, Y, Z, C) for C > 1
    channels) and ``affine`` float64 (4, 4) in; labels (X, Y, Z) uint8 out (any X, Y, Z)."""
    shape = (-1, -1, -1) if in_channels == 1 else (-1, -1, -1, in_channels)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape, IMAGE), TensorSpec(np.dtype(np.float64), (4, 4), AFFINE)]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))


def volume_input(image: np.ndarray | str | Path, affine: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The pyfunc model's input for a volume: an array with its affine, or a NIfTI file (read with
    nibabel: its data with scaling applied, and its affine, as ``medseg predict`` reads it).

    Raises:
        DataError: the file cannot be read, or an array comes without its affine.
    """
    from medseg.data.nifti import load_nifti
    from medseg.errors import DataError

    if not isinstance(image, np.ndarray):
        img = load_nifti(Path(image))
        image, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
    elif affine is None:
        raise DataError("an array input needs its 4x4 affine (voxel to world, mm)", "<array>")
    return {IMAGE: np.ascontiguousarray(image, dtype=np.float32), AFFINE: np.asarray(affine, dtype=np.float64)}


def input_example(in_channels: int, size: int = 16,
                  intensity_range: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """A small input (``size``^3 voxels of 1 mm: a bright cube on a smooth ramp, so that no
    normalization makes it constant) for the logged model's input example.

    Args:
        in_channels: channels of the image (the last axis when more than 1).
        size: edge length in voxels.
        intensity_range: ``(low, high)`` the image's values span, in the scanner's units: a CT plan's
            clipping window (``Plan.ct_clip``), so that clipping does not make the example constant;
            ``None``: 0.125 to 3.375 (arbitrary units, z-scored per image for MRI).
    """
    ramp = np.linspace(0.5, 1.5, size, dtype=np.float32)
    image = ramp[:, None, None] * ramp[None, :, None] * ramp[None, None, :]
    q = size // 4
    image[q:-q, q:-q, q:-q] += 2.0
    if intensity_range is not None:
        low, high = intensity_range
        image = low + (high - low) * (image - image.min()) / (image.max() - image.min())
    if in_channels > 1:
        image = np.repeat(image[..., None], in_channels, axis=-1)
    return {IMAGE: np.ascontiguousarray(image, dtype=np.float32), AFFINE: np.eye(4)}


class MedsegPyfuncModel(PythonModel):
    """The MLflow ``PythonModel`` around :class:`medseg.inference.segmenter.Segmenter`.

    ``predict`` takes ``{"image": array, "affine": (4, 4)}`` (see :func:`volume_input`) and returns
    the labels (X, Y, Z) uint8 on the input's grid: what ``medseg predict`` writes for the same
    volume. The device is CUDA when available (``MEDSEG_DEVICE`` overrides it), else CPU.
    """

    # The input is checked against the logged signature (a dict of tensors), not by MLflow's
    # type-hint validation, which cannot express it; without this MLflow warns at every load that
    # predict has no type hints (MLflow skips that validation for classes with this attribute).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        """Load the model directory artifact with medseg's safe loader.

        Raises:
            ModelError: incomplete, unsafe or incompatible model directory.
        """
        import os

        from medseg.inference.segmenter import Segmenter

        self.segmenter = Segmenter.load(context.artifacts[MODEL_DIR_ARTIFACT],
                                        device=os.environ.get("MEDSEG_DEVICE", "auto"))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        """Segment one volume given as ``{"image", "affine"}`` arrays.

        Raises:
            DataError: missing keys, wrong dimensionality or channel count.
        """
        from medseg.errors import DataError

        if not isinstance(model_input, dict) or IMAGE not in model_input or AFFINE not in model_input:
            raise DataError(f"the input must be a dict with {IMAGE!r} and {AFFINE!r} arrays (see "
                            "medseg.inference.pyfunc.volume_input)", "model_input")
        result = self.segmenter.predict(np.asarray(model_input[IMAGE], dtype=np.float32),
                                        affine=np.asarray(model_input[AFFINE], dtype=np.float64))
        return result.labels
