"""DICOM series: discovery and conversion to NIfTI with SimpleITK's ImageSeriesReader (GDCM).

SimpleITK reads the series in LPS world coordinates and writes NIfTI with the matching RAS
affine, so the converted volume sits where the scanner put it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from medseg.atomic import atomic_path
from medseg.errors import DataError


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


def read_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read one series of ``folder`` as a 3D SimpleITK image (LPS physical space, mm).

    Raises:
        DataError: no DICOM series in the folder; several series and no ``series_uid`` (the
            message lists them); an unknown ``series_uid``; an unreadable or 2D series.
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
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise DataError(f"cannot read DICOM series {chosen.uid}: {str(e).strip()[:300]}", folder) from None
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise DataError(f"series {chosen.uid} is not a 3D volume (size {image.GetSize()})", folder)
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
