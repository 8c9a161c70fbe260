"""``medseg predict``: a model over a file, a folder of NIfTI files, a DICOM series folder, or a
folder of DICOM series folders. One failing case does not stop the others; outputs are written
to temporary names and renamed, existing outputs are skipped unless ``overwrite``."""
from __future__ import annotations

import csv
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.atomic import atomic_path, write_csv
from medseg.data.dataset import NIFTI_SUFFIXES, case_id
from medseg.data.dicom import is_dicom_folder
from medseg.errors import DataError, InputWarning, MedsegError
from medseg.inference.predictor import label_image
from medseg.inference.segmenter import Segmenter, SegmentationResult
from medseg.progress import ProgressFn, silent


@dataclass(frozen=True)
class InputCase:
    """One input volume: a NIfTI file or a DICOM series folder."""

    name: str
    path: Path


@dataclass
class BatchSummary:
    """What ``predict_inputs`` did. ``failed`` maps a case name to its error message, ``warnings``
    to the warnings its prediction raised (e.g. a blank image)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def collect_inputs(path: str | Path) -> list[InputCase]:
    """Resolve the ``--input`` argument into cases.

    Raises:
        DataError: the path does not exist, is a file that is not NIfTI, or a folder with
            neither NIfTI files nor DICOM series (directly or one level down).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("input not found", path)
    if path.is_file():
        if not _is_nifti(path):
            raise DataError("not a NIfTI file (.nii/.nii.gz); for DICOM pass the series folder", path)
        return [InputCase(case_id(path), path)]
    niftis = sorted(p for p in path.iterdir() if p.is_file() and _is_nifti(p))
    if niftis:
        return [InputCase(case_id(p), p) for p in niftis]
    if is_dicom_folder(path):
        return [InputCase(path.name, path)]
    subs = sorted(p for p in path.iterdir() if p.is_dir() and is_dicom_folder(p))
    if subs:
        return [InputCase(p.name, p) for p in subs]
    raise DataError("no NIfTI files or DICOM series found in this folder (or its subfolders)", path)


def check_output_dir(output: Path, input_path: Path) -> None:
    """Refuse an output folder inside the input folder (it would mix results into the inputs)."""
    inp = input_path.resolve()
    out = output.resolve()
    if inp.is_dir() and (out == inp or inp in out.parents):
        raise DataError(f"the output folder {out} is inside the input folder; choose a folder outside it", input_path)


def save_labels(result: SegmentationResult, path: Path) -> None:
    """Write the labels with the input's header (bit-equal affine, qform/sform and codes), atomically."""
    img = label_image(result)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


OUTPUT_FORMATS = {"nifti": "_seg.nii.gz", "dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}
DICOM_OUTPUTS = ("dicom-seg", "rtstruct")  # reference a source series: DICOM inputs only


def check_output_format(output_format: str, inputs: list[InputCase]) -> None:
    """Refuse an unknown format, and a DICOM output (SEG, RTSTRUCT) for NIfTI inputs, which have no
    series to reference (checked before any model is loaded or any case predicted).

    Raises:
        DataError: naming the format or the first NIfTI input.
    """
    if output_format not in OUTPUT_FORMATS:
        raise DataError(f"unknown output format {output_format[:40]!r}; choose one of {', '.join(OUTPUT_FORMATS)}",
                        "--output-format")
    if output_format in DICOM_OUTPUTS:
        nifti = [c for c in inputs if not c.path.is_dir()]
        if nifti:
            raise DataError(f"--output-format {output_format} references the input's DICOM series, and this input "
                            f"is NIfTI ({len(nifti)} of {len(inputs)} inputs): use --output-format nifti, or give "
                            "the DICOM series folder", nifti[0].path)


def _write_output(result: SegmentationResult, segmenter: Segmenter, target: Path, output_format: str) -> None:
    """Write one case's labels in ``output_format`` to ``target`` (atomically)."""
    if output_format == "dicom-seg":
        from medseg.inference.dicom_seg import write_dicom_seg
        write_dicom_seg(result.labels, result.source_files, segmenter.label_names, target,
                        dataset=segmenter.plan.dataset, model_sha256=segmenter.model_sha256)
    elif output_format == "rtstruct":
        from medseg.inference.rtstruct import write_rtstruct
        write_rtstruct(result.labels, result.source_files, segmenter.label_names, target,
                       model_sha256=segmenter.model_sha256)
    else:
        save_labels(result, target)


def predict_inputs(segmenter: Segmenter, inputs: list[InputCase], output: Path, *, overwrite: bool = False,
                   save_probabilities: bool = False, series_uid: str | None = None, output_format: str = "nifti",
                   progress: ProgressFn = silent) -> BatchSummary:
    """Segment every input into ``output/<case>_seg.nii.gz`` (or, for DICOM inputs, a DICOM
    Segmentation ``<case>_seg.dcm`` with ``output_format="dicom-seg"``, or an RT Structure Set
    ``<case>_rtstruct.dcm`` with ``"rtstruct"``, each referencing the input series) and write
    ``output/volumes.csv``.

    ``volumes.csv`` has one row per case and foreground label: case, label, label_name, voxels,
    volume_ml (voxels x the input's voxel volume). With ``save_probabilities``, also
    ``<case>_probabilities.npz`` holding ``probabilities`` (K, X, Y, Z) float16.
    """
    output.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    rows: list[dict] = []
    start = time.perf_counter()
    for case in progress(inputs, "predict", len(inputs)):
        target = output / f"{case.name}{OUTPUT_FORMATS[output_format]}"
        if target.exists() and not overwrite:
            summary.skipped.append(case.name)
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InputWarning)
                result = segmenter.predict(case.path, series_uid=series_uid, keep_probabilities=save_probabilities)
            said = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
            if said:
                summary.warnings[case.name] = said
            _write_output(result, segmenter, target, output_format)
            if save_probabilities:
                probs = result.probabilities.astype(np.float16)
                with atomic_path(output / f"{case.name}_probabilities.npz", suffix=".npz") as tmp:
                    np.savez_compressed(tmp, probabilities=probs)
        except (MedsegError, OSError, RuntimeError, ValueError) as e:
            summary.failed[case.name] = str(e)
            continue
        summary.done.append(case.name)
        for k, name in segmenter.label_names.items():
            rows.append({"case": case.name, "label": k, "label_name": name, "voxels": result.voxels[name],
                         "volume_ml": f"{result.volumes_ml[name]:.6f}"})
    csv_path = output / "volumes.csv"
    if csv_path.is_file():  # keep earlier rows of cases not predicted again
        with csv_path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("case") not in summary.done] + rows
    if rows:
        write_csv(rows, csv_path)
    summary.seconds = time.perf_counter() - start
    return summary
