"""DICOM series: discovery and conversion to NIfTI with SimpleITK's ImageSeriesReader (GDCM).

SimpleITK reads the series in LPS world coordinates and writes NIfTI with the matching RAS
affine, so the converted volume sits where the scanner put it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.atomic import atomic_path
from medseg.errors import DataError


SLICE_SPACING_TOLERANCE = 0.01  # largest deviation of a slice gap from the median gap, as a share of it


def check_slice_positions(positions: np.ndarray, orientation: np.ndarray, where: str | Path) -> None:
    """Refuse a series whose slices are not evenly spaced along the slice normal.

    A missing, duplicated or unreadable slice (GDCM leaves it out) would otherwise be read as an
    evenly spaced volume, misplacing every slice after the gap by up to a slice thickness. The
    same check as dcm2niix's and ITK's non-uniform sampling warning, but refusing.

    Args:
        positions: (S, 3) ImagePositionPatient of each slice in reading order (mm, LPS).
        orientation: ImageOrientationPatient (6 direction cosines) of the series.
        where: the folder, named in the error.

    Raises:
        DataError: two slices at the same position, or a gap deviating from the median gap by more
            than :data:`SLICE_SPACING_TOLERANCE` of it.
    """
    if len(positions) < 3:
        return
    normal = np.cross(orientation[:3], orientation[3:])
    gaps = np.abs(np.diff(positions @ normal))
    step = float(np.median(gaps))
    if step <= 1e-6 or gaps.min() <= 1e-6:
        raise DataError("two or more slices share a position: the folder holds duplicate slices or more than one "
                        "volume in this series", where)
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > SLICE_SPACING_TOLERANCE * step:
        raise DataError(f"slices are not evenly spaced: {gaps[worst]:.3f} mm between slices {worst + 1} and "
                        f"{worst + 2} of {len(positions)}, {step:.3f} mm elsewhere. A slice is missing or unreadable, "
                        "or the series is not one volume; fix the series (it would be read with misplaced slices)",
                        where)


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series in a folder: its SeriesInstanceUID, files (sorted by GDCM along the
    slice normal) and a description (SeriesDescription, modality) for listings."""

    uid: str
    folder: Path
    files: tuple[str, ...]
    description: str

    def __str__(self) -> str:
        return f"{self.uid}  ({len(self.files)} files; {self.description})"


def _describe(first_file: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(first_file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "unreadable header"
    get = lambda tag: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""  # noqa: E731
    return ", ".join(x for x in (get("0008|103e"), get("0008|0060")) if x) or "no description"


def find_series(folder: str | Path) -> list[SeriesInfo]:
    """All DICOM series directly inside ``folder`` (not its subfolders)."""
    folder = Path(folder)
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    out = []
    for uid in uids:
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if files:
            out.append(SeriesInfo(uid, folder, files, _describe(files[0])))
    return out


def choose_series(folder: str | Path, series_uid: str | None = None) -> SeriesInfo:
    """The series of ``folder`` to read: its only one, or the one with ``series_uid``; its files
    are in GDCM's order along the slice normal (the order of the volume's slices).

    Raises:
        DataError: no DICOM series in the folder; several and no ``series_uid`` (the message lists
            them); an unknown ``series_uid``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("DICOM folder not found", folder)
    series = find_series(folder)
    if not series:
        raise DataError("no DICOM series found in this folder (empty, or files are not DICOM)", folder)
    if series_uid is None:
        if len(series) > 1:
            listing = "\n  ".join(str(s) for s in series)
            raise DataError(f"{len(series)} DICOM series found; choose one with --series-uid:\n  {listing}", folder)
        chosen = series[0]
    else:
        matches = [s for s in series if s.uid == series_uid]
        if not matches:
            raise DataError(f"series {series_uid} is not in this folder; found: {', '.join(s.uid for s in series)}",
                            folder)
        chosen = matches[0]
    return chosen


def read_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read one series of ``folder`` as a 3D SimpleITK image (LPS physical space, mm).

    Raises:
        DataError: no DICOM series in the folder; several series and no ``series_uid`` (the
            message lists them); an unknown ``series_uid``; an unreadable or 2D series; slices
            missing, duplicated or unevenly spaced (:func:`check_slice_positions`).
    """
    return read_chosen_series(choose_series(folder, series_uid))


def read_chosen_series(chosen: SeriesInfo) -> sitk.Image:
    """Read a series found by :func:`choose_series` (see :func:`read_series` for the errors)."""
    folder = chosen.folder
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice headers, for the slice-position check
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's non-uniform sampling warning: checked below
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise DataError(f"cannot read DICOM series {chosen.uid}: {str(e).strip()[:300]}", folder) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise DataError(f"series {chosen.uid} is not a 3D volume (size {image.GetSize()})", folder)
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                              for i in range(len(chosen.files))])
        orientation = np.array([float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")])
    except (RuntimeError, ValueError):
        raise DataError(f"series {chosen.uid}: a slice lacks a readable ImagePositionPatient or "
                        "ImageOrientationPatient, so the slice geometry cannot be checked", folder) from None
    check_slice_positions(positions, orientation, folder)
    return image


def write_nifti_atomic(image: sitk.Image, path: str | Path) -> Path:
    """Write ``image`` to ``path`` (.nii.gz) through a temporary file renamed into place."""
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(path)


def dicom_to_nifti(folder: str | Path, output: str | Path, series_uid: str | None = None) -> Path:
    """Convert one DICOM series to a NIfTI file (see :func:`read_series` for the errors)."""
    return write_nifti_atomic(read_series(folder, series_uid), output)


def is_dicom_folder(folder: Path) -> bool:
    """True when ``folder`` directly holds at least one DICOM series."""
    return folder.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
