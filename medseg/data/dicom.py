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
ORIENTATION_TOLERANCE = 1e-4  # largest difference between two slices' direction cosines
PERPENDICULAR_TOLERANCE = 1e-3  # 1 - cos(angle) between the stacking direction and the slice normal


def check_slice_positions(positions: np.ndarray, orientation: np.ndarray, where: str | Path) -> None:
    """Refuse a series whose slices do not form one regular volume: evenly spaced and stacked along
    the slice normal, as highdicom's ``get_volume_positions`` defines a volume (highdicom.spatial;
    relative tolerance :data:`SLICE_SPACING_TOLERANCE`, in reading order).

    A missing, duplicated or unreadable slice (GDCM leaves it out) would otherwise be read as an
    evenly spaced volume, misplacing every slice after the gap by up to a slice thickness; a
    sheared stack (a tilted-gantry CT, each slice shifted within its plane) would be read as if its
    slices lay straight along the normal, misplacing the last slices by centimetres.

    Args:
        positions: (S, 3) ImagePositionPatient of each slice in reading order (mm, LPS).
        orientation: ImageOrientationPatient (6 direction cosines) of the series.
        where: the folder, named in the error.

    Raises:
        DataError: two slices at the same position, a gap deviating from the median gap by more
            than :data:`SLICE_SPACING_TOLERANCE` of it, or slices stacked obliquely to their normal
            (sheared), each with what was found.
    """
    if len(positions) < 2:
        return
    from highdicom.spatial import get_volume_positions
    spacing, _ = get_volume_positions(positions, orientation, rtol=SLICE_SPACING_TOLERANCE,
                                      perpendicular_tol=PERPENDICULAR_TOLERANCE, sort=False)
    if spacing is not None:
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
    stack = positions[-1] - positions[0]
    angle = float(np.degrees(np.arccos(min(1.0, abs(stack @ normal) / max(np.linalg.norm(stack), 1e-9)))))
    shift = float(np.linalg.norm(stack - (stack @ normal) * normal))
    raise DataError(f"the slices are stacked {angle:.2f} degrees off their normal (sheared, as a tilted-gantry CT): "
                    f"the last slice is shifted {shift:.1f} mm within its plane from the first. medseg reads volumes "
                    "whose slices lie along their normal; resample the series first (for example dcm2niix, which "
                    "corrects gantry tilt)", where)


def check_series_headers(headers: list[dict[str, str]], where: str | Path) -> None:
    """Refuse a series whose slices disagree on what must be one value for a volume: their in-plane
    orientation (ImageOrientationPatient, within :data:`ORIENTATION_TOLERANCE`), their rescale
    (RescaleSlope and RescaleIntercept, which ITK applies from one slice to all, so per-slice
    scaling as in PET would be lost) and their FrameOfReferenceUID.

    Args:
        headers: per slice in reading order, the DICOM tags ``"0020|0037"`` (orientation),
            ``"0028|1053"`` / ``"0028|1052"`` (slope / intercept) and ``"0020|0052"`` (frame of
            reference) as SimpleITK's metadata strings; a missing tag is absent or empty.
        where: the folder, named in the error.

    Raises:
        DataError: naming the slice that differs from the first and both values.
    """
    first = headers[0]
    iop0 = _floats(first.get("0020|0037", ""))
    for i, h in enumerate(headers[1:], start=2):
        iop = _floats(h.get("0020|0037", ""))
        if iop0 is not None and iop is not None and np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise DataError(f"slice {i} of {len(headers)} has another in-plane orientation than slice 1 "
                            f"({h['0020|0037']} against {first['0020|0037']}): the series is not one volume", where)
        for tag, name in (("0028|1053", "RescaleSlope"), ("0028|1052", "RescaleIntercept")):
            a, b = _floats(first.get(tag, "")), _floats(h.get(tag, ""))
            if (a is None) != (b is None) or (a is not None and not np.allclose(a, b, rtol=1e-6, atol=1e-9)):
                raise DataError(f"slice {i} of {len(headers)} has {name} {h.get(tag, '').strip() or 'none'}, slice 1 "
                                f"{first.get(tag, '').strip() or 'none'}: per-slice scaling (as in PET) would be read "
                                "as one scaling for the whole series, so its values would be wrong. Convert it with a "
                                "tool that applies per-slice scaling (for example dcm2niix) and give medseg the NIfTI",
                                where)
        if h.get("0020|0052", "").strip() != first.get("0020|0052", "").strip():
            raise DataError(f"slice {i} of {len(headers)} has another FrameOfReferenceUID than slice 1: the slices "
                            "are not in one patient coordinate system", where)


def _floats(text: str) -> np.ndarray | None:
    try:
        values = [float(v) for v in text.replace(" ", "").split("\\") if v != ""]
    except ValueError:
        return None
    return np.asarray(values) if values else None


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
            missing, duplicated, unevenly spaced or sheared (:func:`check_slice_positions`); slices that
            differ in orientation, rescale or frame of reference (:func:`check_series_headers`).
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
    tags = ("0020|0037", "0028|1053", "0028|1052", "0020|0052")
    check_series_headers([{t: reader.GetMetaData(i, t) for t in tags if reader.HasMetaDataKey(i, t)}
                          for i in range(len(chosen.files))], folder)
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
