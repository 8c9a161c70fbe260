"""The Python API for research scripts.

Example::

    from medseg import Segmenter
    seg = Segmenter.load("runs/.../model", device="cpu")
    result = seg.predict("case.nii.gz")          # or seg.predict(array, affine=affine)
    result.labels        # (X, Y, Z) uint8, the input's voxel grid
    result.affine        # the input's 4x4 affine (mm)
    result.volumes_ml    # {"Anterior": 1.52, "Posterior": 1.31}
    for r in seg.predict_many(paths): ...
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent

from medseg.data.dataset import case_id
from medseg.data.dicom import choose_series, is_dicom_folder, read_chosen_series, write_nifti_atomic
from medseg.devices import resolve_device
from medseg.errors import DataError
from medseg.inference.predictor import Predictor, SegmentationResult, measure
from medseg.models.directory import load_model_dir
from medseg.progress import ProgressFn, rich_progress, silent


class Segmenter:
    """A trained model ready to segment volumes (see the module docstring for an example).

    Use :meth:`load`. Inference is sliding-window (Gaussian weighting) followed by the exact
    inverse of the preprocessing, so outputs lie on the input's voxel grid.
    """

    def __init__(self, predictor: Predictor, largest_component: bool = False):
        self.predictor = predictor
        self.plan = predictor.plan
        self.label_names = self.plan.foreground_labels
        self._lcc = KeepLargestConnectedComponent(applied_labels=list(self.label_names), independent=True) \
            if largest_component else None

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", overlap: float | None = None,
             sw_batch_size: int | None = None, tta: bool = False, amp: str = "bf16",
             largest_component: bool = False) -> "Segmenter":
        """Load a model directory.

        Args:
            model_dir: written by ``medseg train`` (``medseg_model.json`` + ``weights.pt``).
            device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``...).
            overlap: sliding-window overlap in [0, 1); ``None``: the one the model was validated with
                (recorded in the model directory).
            sw_batch_size: windows per forward pass; ``None``: the model directory's.
            tta: mirroring test-time augmentation (8x slower).
            amp: ``"bf16" | "fp16" | "none"`` autocast on CUDA.
            largest_component: keep only the largest connected component of each label.

        Raises:
            ModelError: incomplete, unsafe or incompatible model directory.
            ConfigError: an unknown device, or CUDA without a GPU.
            ValueError: bad overlap.
        """
        if overlap is not None and not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        model = load_model_dir(model_dir, device=resolve_device(device))
        return cls(Predictor(model, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta, amp=amp), largest_component)

    def predict(self, image: str | Path | np.ndarray, affine: np.ndarray | None = None, *, series_uid: str | None = None,
                keep_probabilities: bool = False) -> SegmentationResult:
        """Segment one volume.

        Args:
            image: a NIfTI file, a DICOM series folder, or an array (X, Y, Z) (or (X, Y, Z, C)).
            affine: the array's 4x4 voxel-to-world affine in mm (required with an array).
            series_uid: which series of a DICOM folder holding several.
            keep_probabilities: also return the softmax probabilities.

        Raises:
            DataError: unreadable input, wrong dimensionality or channel count, bad DICOM folder.
        """
        if isinstance(image, np.ndarray):
            if affine is None:
                raise DataError("an array input needs its 4x4 affine (voxel to world, mm)", "<array>")
            with tempfile.TemporaryDirectory(prefix="medseg-") as tmp:
                path = Path(tmp) / "array.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(image, dtype=np.float32), np.asarray(affine, float)), path)
                return self._finish("array", self.predictor.predict_file(path, keep_probabilities))
        path = Path(image)
        if path.is_dir():
            if not is_dicom_folder(path):
                raise DataError("folder holds no DICOM series", path)
            chosen = choose_series(path, series_uid)  # one scan of the folder for the image and its files
            sitk_image, files = read_chosen_series(chosen), chosen.files
            with tempfile.TemporaryDirectory(prefix="medseg-") as tmp:
                nii = write_nifti_atomic(sitk_image, Path(tmp) / f"{path.name}.nii.gz")
                return self._finish(path.name, self.predictor.predict_file(nii, keep_probabilities), files)
        return self._finish(case_id(path), self.predictor.predict_file(path, keep_probabilities))

    @property
    def model_sha256(self) -> str:
        """The SHA-256 of the model's weights, as its model directory records it."""
        checksums = self.predictor.model.meta.get("checksums") or {}
        return str(next(iter(checksums.values()), ""))

    def predict_many(self, inputs: Iterable[str | Path], progress: bool | ProgressFn = True) -> Iterator[SegmentationResult]:
        """Segment several volumes, yielding results one at a time (with a progress bar by default).

        Raises:
            DataError: on the first bad input (use ``medseg predict`` to skip and report failures).
        """
        items = list(inputs)
        track = rich_progress if progress is True else (silent if progress is False else progress)
        for item in track(items, "segment", len(items)):
            yield self.predict(item)

    def _finish(self, name: str, pred: SegmentationResult, source_files: tuple[str, ...] = ()) -> SegmentationResult:
        labels = pred.labels
        if self._lcc is not None:
            labels = np.asarray(self._lcc(torch.as_tensor(labels)[None]))[0].astype(labels.dtype)
        return measure(name, labels, pred.affine, self.label_names, self.plan.num_classes,
                       probabilities=pred.probabilities, header=pred.header, source_files=source_files)
