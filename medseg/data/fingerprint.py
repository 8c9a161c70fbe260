"""The dataset fingerprint: spacings, shapes, foreground intensities and label counts.

Computing it reads every image/label pair once and checks it (see :func:`inspect_case`), in the
spirit of nnU-Net's dataset fingerprint (Isensee et al., Nature Methods 2021). The result is
cached as JSON, keyed by the files' paths, sizes and modification times, so a second run on the
same data neither re-reads nor re-checks it. The default target spacing (median) and patch size
derive from it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_write_text
from medseg.data.dataset import Case, DatasetSpec
from medseg.data.nifti import load_nifti, ras_permutation, read_array
from medseg.errors import DataError
from medseg.progress import ProgressFn, silent

FINGERPRINT_VERSION = 1
AFFINE_TOLERANCE_MM = 1e-3
SAMPLES_PER_CASE = 10_000
FINGERPRINT_KEYS = ("version", "dataset", "modality", "labels", "num_cases", "median_spacing", "median_shape",
                    "foreground_intensity", "label_voxels", "cases")


def read_pair(case: Case, labels: dict[int, str], num_channels: int = 1):
    """Read one image/label pair after checking that they belong together.

    Checks: both files are readable NIfTI; the image is 3D (or 4D with ``num_channels``
    channels); label and image have the same spatial shape and affines equal within
    1e-3 mm; no NaN/Inf voxels; label values are integers declared in ``labels``. Training
    (through the fingerprint) and ``medseg evaluate`` run the same checks.

    Returns:
        ``(image header, image (X, Y, Z) or (X, Y, Z, C) float32, label (X, Y, Z) int64)`` in the
        files' own voxel order.

    Raises:
        DataError: naming the offending file and what is wrong with it.
    """
    img, lbl = load_nifti(case.image), load_nifti(case.label)
    ishape, lshape = img.shape, lbl.shape
    if len(ishape) == 3 and num_channels == 1:
        spatial = ishape
    elif len(ishape) == 4 and ishape[3] == num_channels:
        spatial = ishape[:3]
    else:
        raise DataError(f"image has shape {ishape}; expected a 3D volume with {num_channels} channel(s)", case.image)
    if tuple(lshape[:3]) != tuple(spatial) or len(lshape) not in (3, 4) or (len(lshape) == 4 and lshape[3] != 1):
        raise DataError(f"label shape {lshape} does not match image shape {ishape} ({case.image.name})", case.label)
    diff = float(np.max(np.abs(img.affine - lbl.affine)))
    if diff > AFFINE_TOLERANCE_MM:
        raise DataError(f"label affine differs from the image affine by {diff:.4g} mm (tolerance "
                        f"{AFFINE_TOLERANCE_MM} mm): the label is not on the image's voxel grid", case.label)
    image = read_array(img, case.image)
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"image contains {bad} NaN/Inf voxels", case.image)
    label_f = read_array(lbl, case.label).reshape(spatial)
    if not np.isfinite(label_f).all() or not np.all(label_f == np.round(label_f)):
        raise DataError("label contains non-integer values", case.label)
    label = label_f.astype(np.int64)
    undeclared = sorted(set(np.unique(label).tolist()) - set(labels))
    if undeclared:
        raise DataError(f"label values {undeclared} are not declared in dataset.json labels {sorted(labels)}", case.label)
    return img, image, label


def inspect_case(case: Case, labels: dict[int, str], num_channels: int = 1, rng: np.random.Generator | None = None) -> dict:
    """Check one image/label pair (:func:`read_pair`) and measure it.

    Returns:
        ``{"case_id", "spacing" (mm, RAS order), "shape" (voxels, RAS order),
        "label_voxels" {label: count}, "foreground_sample" (float list, up to 10,000 image
        values inside the label)}``.

    Raises:
        DataError: naming the offending file and what is wrong with it.
    """
    rng = rng or np.random.default_rng(0)
    img, image, label = read_pair(case, labels, num_channels)
    spatial = label.shape
    values, counts = np.unique(label, return_counts=True)
    first = image if image.ndim == 3 else image[..., 0]
    fg = first[label > 0]
    if fg.size > SAMPLES_PER_CASE:
        fg = rng.choice(fg, SAMPLES_PER_CASE, replace=False)
    perm = ras_permutation(img.affine)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    return {
        "case_id": case.case_id,
        "spacing": zooms[perm].tolist(),
        "shape": np.asarray(spatial)[perm].tolist(),
        "label_voxels": {int(v): int(c) for v, c in zip(values, counts)},
        "foreground_sample": fg.astype(float).tolist(),
    }


def _cache_key(spec: DatasetSpec) -> str:
    h = hashlib.sha256(f"v{FINGERPRINT_VERSION}".encode())
    h.update((spec.root / "dataset.json").read_bytes())
    for c in spec.cases:
        for p in (c.image, c.label):
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def compute_fingerprint(spec: DatasetSpec, progress: ProgressFn = silent) -> dict:
    """Read and check every case of ``spec`` and summarise the dataset.

    Returns:
        A JSON-serialisable dict: ``dataset``, ``modality``, ``labels``, ``num_cases``,
        ``median_spacing`` (mm, RAS), ``median_shape`` (voxels, RAS), ``spacings``/``shapes``
        per case, ``foreground_intensity`` (mean, std, min, max, median, percentile_00_5,
        percentile_99_5 over a sample of foreground voxels) and ``label_voxels`` (total per label).

    Raises:
        DataError: the first bad case found (see :func:`inspect_case`).
    """
    rng = np.random.default_rng(1234)
    per_case = [inspect_case(c, spec.labels, len(spec.modality), rng)
                for c in progress(spec.cases, "Checking cases", len(spec.cases))]
    fg = np.concatenate([np.asarray(p.pop("foreground_sample"), dtype=float) for p in per_case])
    if fg.size == 0:
        raise DataError("no foreground voxels in any label: nothing to learn", spec.root)
    totals = {k: 0 for k in spec.labels}
    for p in per_case:
        for k, v in p["label_voxels"].items():
            totals[k] += v
    spacings = np.array([p["spacing"] for p in per_case])
    shapes = np.array([p["shape"] for p in per_case])
    return {
        "version": FINGERPRINT_VERSION,
        "dataset": spec.name,
        "modality": spec.modality,
        "labels": {str(k): v for k, v in spec.labels.items()},
        "num_cases": len(per_case),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "foreground_intensity": {
            "mean": float(fg.mean()), "std": float(fg.std()), "min": float(fg.min()), "max": float(fg.max()),
            "median": float(np.median(fg)), "percentile_00_5": float(np.percentile(fg, 0.5)),
            "percentile_99_5": float(np.percentile(fg, 99.5)),
        },
        "label_voxels": {str(k): v for k, v in totals.items()},
        "cases": {p["case_id"]: {"spacing": p["spacing"], "shape": p["shape"]} for p in per_case},
    }


def load_or_compute_fingerprint(spec: DatasetSpec, cache_dir: str | Path, progress: ProgressFn = silent) -> tuple[dict, Path]:
    """The cached fingerprint of ``spec`` if its files are unchanged, else compute and cache it.

    Returns:
        ``(fingerprint, path of the cached JSON)``.

    Raises:
        DataError: a bad case (only when computing).
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / f"fingerprint-{spec.root.name}-{_cache_key(spec)}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if isinstance(cached, dict) and all(k in cached for k in FINGERPRINT_KEYS):
                return cached, path
        except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            pass  # a damaged or incomplete cache is recomputed
    fp = compute_fingerprint(spec, progress)
    atomic_write_text(path, json.dumps(fp, indent=1))
    return fp, path
