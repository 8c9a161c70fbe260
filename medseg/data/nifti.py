"""Reading NIfTI files with errors that name the file and say what is wrong."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import DataError

MAX_VOXELS = 2**30  # voxels per channel medseg reads (4 GiB as float32): larger headers are refused
QFORM_SFORM_TOLERANCE_VOXELS = 0.1  # largest corner distance between qform and sform, in smallest voxel sizes


def _check_size(img: nib.Nifti1Image, path: Path) -> None:
    shape = img.shape
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels > MAX_VOXELS:
        raise DataError(f"the header declares {' x '.join(map(str, shape))} voxels ({voxels:.3g}), more than the "
                        f"{MAX_VOXELS:.3g} medseg reads: the header is wrong or the image must be cropped first", path)
    if not str(path).endswith(".gz"):  # an uncompressed file must hold what the header declares
        needed = int(img.header.get_data_offset()) + voxels * img.get_data_dtype().itemsize
        have = path.stat().st_size
        if have < needed:
            raise DataError(f"the header declares {' x '.join(map(str, shape))} voxels ({needed} bytes with the "
                            f"header) but the file has {have} bytes: truncated, or the header is wrong", path)


def _check_qform_sform(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse a file whose qform and sform (both set) place the volume differently (a corner more than
    a tenth of the smallest voxel size apart; the quaternion qform of an oblique scan differs from
    its sform by rounding, thousandths of a mm, which is accepted): viewers and
    libraries disagree on which one wins (nibabel and MONAI take the sform, ITK may take the qform),
    so the same voxels would be segmented in one geometry and shown in another."""
    header = img.header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if not qcode or not scode or qform is None or sform is None:
        return
    corners = np.array([[i, j, k, 1.0] for i in (0, img.shape[0] - 1) for j in (0, img.shape[1] - 1)
                        for k in (0, img.shape[2] - 1)]).T
    distance = float(np.max(np.linalg.norm((qform @ corners - sform @ corners)[:3], axis=0)))
    tolerance = QFORM_SFORM_TOLERANCE_VOXELS * float(min(header.get_zooms()[:3]))
    if not distance <= tolerance:
        raise DataError(f"the header's qform and sform disagree: the volume's corners are up to {distance:.3g} mm "
                        f"apart between them (tolerance {tolerance:.3g} mm, a tenth of a voxel), so its geometry is "
                        "ambiguous. Make them equal (e.g. nibabel: img.set_qform(img.get_sform()); FSL: "
                        "fslorient -copysform2qform), or unset the wrong one", path)


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI-1/2 file (header only; data is read lazily).

    Raises:
        DataError: the file is missing, is not NIfTI, its header is unreadable, its affine is
            not finite or singular, its qform and sform (both set) disagree by more than
            :data:`QFORM_SFORM_TOLERANCE_VOXELS`, it declares more than :data:`MAX_VOXELS` voxels, or
            (uncompressed) it is shorter than its header declares.
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
    if len(img.shape) < 3:
        raise DataError(f"image has shape {img.shape}; expected a 3D volume", path)
    _check_size(img, path)
    _check_qform_sform(img, path)
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
