"""Segmentations as DICOM Segmentation objects (highdicom), for DICOM series inputs.

A SEG object references its source series instance by instance, so PACS viewers overlay it on the
images it was computed from. One segment per foreground label: the label name from dataset.json as
the segment label, a SNOMED CT concept for its type where pydicom's code dictionary has one
matching the label name (``Mandible``, ``SpinalCord``, ``ParotidGland`` for ``LeftParotid``,
``BrainStem`` for ``Brainstem``...) or else the dataset's name (``Hippocampus`` for Task04's ``Anterior``/``Posterior``),
and ``Anatomical Structure`` (SCT 91723000) otherwise; category ``Anatomical Structure``; algorithm
type AUTOMATIC with the algorithm identification (medseg, its version, the model weights' SHA-256).
Concepts come from DICOM's CID 7151 (Segmentation Property Types) only, so a label called
``Anterior`` is not coded as the qualifier "Anterior".
Uses highdicom (Herrmann et al., J Digit Imaging 2022).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.atomic import atomic_path
from medseg.errors import DataError

SCT_PREFIXES = ("Left", "Right")
# Type 2 patient and study attributes a SEG copies from its source: present but empty when the
# (de-identified) source lacks them, as DICOM allows for Type 2
TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "ReferringPhysicianName", "AccessionNumber", "StudyID")


def snomed_concept(name: str, dataset: str = ""):
    """The SNOMED CT code for a label ``name`` among DICOM's segmentation property types (CID 7151,
    from pydicom's code dictionary; matched case-insensitively as given, without a Left/Right
    prefix, or with ``Gland`` appended), else for ``dataset``, else ``Anatomical Structure``."""
    from pydicom.sr.codedict import codes

    property_types = {kw.lower(): kw for kw in dir(codes.cid7151) if kw[:1].isupper()}

    def lookup(text: str):
        key = "".join(re.split(r"[^A-Za-z0-9]+", text)).lower()
        return getattr(codes.cid7151, property_types[key]) if key in property_types else None

    candidates = [name]
    for prefix in SCT_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            candidates.append(name[len(prefix):])
    candidates += [c + " Gland" for c in list(candidates)] + [dataset]
    for text in candidates:
        code = lookup(text)
        if code is not None:
            return code
    return codes.SCT.AnatomicalStructure


def write_dicom_seg(labels: np.ndarray, source_files: tuple[str, ...], label_names: dict[int, str], path: Path, *,
                    dataset: str = "", model_sha256: str = "") -> Path:
    """Write ``labels`` as a DICOM SEG (binary, one segment per label) referencing ``source_files``.

    Args:
        labels: (X, Y, Z) labels on the series' voxel grid as :class:`SegmentationResult` gives them:
            X the column, Y the row, Z the slice in ``source_files`` order.
        source_files: the series' files in slice order.
        label_names: foreground label value -> name (segment k is label k).
        path: the ``.dcm`` file to write (atomically).
        dataset: the dataset's name (a fallback coded concept).
        model_sha256: the weights' checksum, recorded in the algorithm identification.

    Raises:
        DataError: no source files (not a DICOM input), labels that do not fit the series, or a
            series highdicom cannot reference (the message says why).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if not source_files:
        raise DataError("DICOM SEG output needs a DICOM series input (this input is NIfTI)", path)
    sources = [pydicom.dcmread(f) for f in source_files]
    for ds in sources:  # in memory only: the inputs are never written
        for keyword in TYPE2_FROM_SOURCE:
            if keyword not in ds:
                setattr(ds, keyword, "")
    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))).astype(np.uint8 if max(label_names) < 256
                                                                           else np.uint16)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if frames.shape != (len(sources), rows, cols):
        raise DataError(f"labels of shape {labels.shape} do not fit the series ({len(sources)} slices of "
                        f"{rows} x {cols})", path)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", version=__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters={"model_sha256": model_sha256} if model_sha256 else None)
    segments = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=name[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=snomed_concept(name, dataset),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for k, name in sorted(label_names.items())]
    try:
        seg = _segmentation(hd, sources, frames, segments)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DataError(f"cannot build a DICOM SEG for this series ({type(e).__name__}: {str(e)[:200]})",
                        Path(source_files[0]).parent) from None
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return Path(path)


def _segmentation(hd, sources, frames, segments):
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="medseg", manufacturer_model_name="medseg 3D U-Net",
        software_versions=__version__, device_serial_number="none", series_description="medseg segmentation",
        omit_empty_frames=False)
