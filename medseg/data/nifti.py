"""Reading NIfTI files with errors that name the file and say what is wrong."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import DataError


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI-1/2 file (header only; data is read lazily).

    Raises:
        DataError: the file is missing, is not NIfTI, its header is unreadable, or its affine is
            not finite or singular.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error, ValueError...
        raise DataError(f"not a readable NIfTI file ({type(e).__name__}: {e})", path) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"not a NIfTI file (nibabel reads it as {type(img).__name__})", path)
    affine = img.affine
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError("the header's affine (voxel-to-world transform) is missing, not finite or singular: "
                        "the voxel spacing or orientation is broken", path)
    return img


def read_array(img: nib.Nifti1Image, path: str | Path, dtype=np.float32) -> np.ndarray:
    """Read the voxel array with scaling applied, as ``dtype``.

    Raises:
        DataError: the data is truncated or corrupt.
    """
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise DataError(f"corrupt or truncated image data ({type(e).__name__}: {e})", path) from None


def ras_permutation(affine: np.ndarray) -> np.ndarray:
    """For each RAS axis, the index of the voxel axis that lies closest to it."""
    ornt = nib.io_orientation(affine)
    perm = np.empty(3, dtype=int)
    for voxel_axis, (ras_axis, _flip) in enumerate(ornt[:3]):
        perm[int(ras_axis)] = voxel_axis
    return perm
