"""Reading a Medical Segmentation Decathlon (MSD) layout folder.

An MSD task folder holds ``dataset.json`` (``modality``, ``labels``, ``training`` list of
``{"image", "label"}`` paths relative to the folder), ``imagesTr/`` and ``labelsTr/``
(Simpson et al., arXiv:1902.09063).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import DataError
from medseg.keys import mlflow_key

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_id(path: str | Path) -> str:
    """The case name of an image file: its file name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suf in NIFTI_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


@dataclass(frozen=True)
class Case:
    """One labelled case: ``image`` and ``label`` are absolute paths."""

    case_id: str
    image: Path
    label: Path

    def as_dict(self) -> dict:
        """The MONAI dictionary form ``{"image", "label", "case_id"}`` (paths as str)."""
        return {"image": str(self.image), "label": str(self.label), "case_id": self.case_id}


@dataclass(frozen=True)
class DatasetSpec:
    """What ``dataset.json`` declares.

    Attributes:
        root: the task folder.
        name: the dataset name.
        modality: modality per input channel, e.g. ``["MRI"]`` or ``["CT"]``.
        labels: label value -> name, including 0 (background).
        cases: the training cases, in dataset.json order.
    """

    root: Path
    name: str
    modality: list[str]
    labels: dict[int, str]
    cases: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Output channels of a network for this dataset (background included)."""
        return max(self.labels) + 1


def _require(doc: dict, key: str, kind: type, path: Path):
    if key not in doc:
        raise DataError(f"dataset.json has no {key!r} key (an MSD dataset.json needs modality, labels, training)", path)
    if not isinstance(doc[key], kind):
        raise DataError(f"{key!r} must be a {kind.__name__}, got {type(doc[key]).__name__}", path)
    return doc[key]


def _check_label_names(labels: dict[int, str], path: Path) -> None:
    """Label names become result columns and MLflow keys: they must be non-empty and unique, also
    after the characters MLflow refuses are replaced (``Anterior (head)`` is logged as ``Anterior _head_``)."""
    seen: dict[str, int] = {}
    for value, name in sorted(labels.items()):
        if not name.strip():
            raise DataError(f"label {value} has an empty name in 'labels'", path)
        key = mlflow_key(name, allow_slash=False).casefold()
        if key in seen:
            same = "the same name" if labels[seen[key]] == name else \
                f"names that are the same as MLflow keys ({labels[seen[key]]!r}, {name!r} -> {key!r})"
            raise DataError(f"labels {seen[key]} and {value} have {same}: every label needs its own name, or one "
                            "class's results would overwrite the other's", path)
        seen[key] = value


def read_dataset(root: str | Path) -> DatasetSpec:
    """Read an MSD task folder's ``dataset.json`` and check that every listed file exists.

    Args:
        root: the task folder (contains ``dataset.json``).

    Returns:
        The :class:`DatasetSpec`, cases in dataset.json order.

    Raises:
        DataError: the folder or dataset.json is missing, dataset.json is not JSON or lacks
            ``modality``/``labels``/``training``, the label values are not integers 0..K with 0
            present, two labels share a name (also after MLflow key sanitizing), the training
            list is empty, or a listed image or label file is missing.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError("no dataset.json: an MSD task folder needs dataset.json, imagesTr/ and labelsTr/", root)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON: {e}", path) from None
    if not isinstance(doc, dict):
        raise DataError("the top level must be a JSON object", path)
    modality = _require(doc, "modality", dict, path)
    labels_raw = _require(doc, "labels", dict, path)
    training = _require(doc, "training", list, path)
    try:
        labels = {int(k): str(v) for k, v in labels_raw.items()}
        mods = [str(modality[k]) for k in sorted(modality, key=int)]
    except (TypeError, ValueError):
        raise DataError("'labels' and 'modality' keys must be integers as strings (\"0\", \"1\", ...)", path) from None
    if 0 not in labels or sorted(labels) != list(range(len(labels))):
        raise DataError(f"'labels' must be 0..K with 0 = background, got {sorted(labels)}", path)
    _check_label_names(labels, path)
    if not mods:
        raise DataError("'modality' is empty", path)
    if not training:
        raise DataError("the 'training' list is empty: no cases to train on", path)
    cases, seen, keys = [], set(), {}
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise DataError(f"training[{i}] must be an object with 'image' and 'label' paths", path)
        image, label = (root / entry["image"]).resolve(), (root / entry["label"]).resolve()
        for kind, p in (("image", image), ("label", label)):
            if not p.is_file():
                raise DataError(f"the {kind} file listed in dataset.json training[{i}] is missing", p)
        cid = case_id(image)
        if cid in seen:
            raise DataError(f"case {cid!r} is listed twice in 'training'", path)
        key = mlflow_key(cid, allow_slash=False)
        if key in keys:  # per-case Dice is logged as final_case_dice/<case>/<label>: one would overwrite the other
            raise DataError(f"cases {keys[key]!r} and {cid!r} become the same MLflow key {key!r} (MLflow refuses "
                            "characters other than letters, digits, '_ - . /' and space): rename one of the files",
                            path)
        seen.add(cid)
        keys[key] = cid
        cases.append(Case(cid, image, label))
    return DatasetSpec(root=root, name=str(doc.get("name", root.name)), modality=mods, labels=labels, cases=cases)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def case_list_digest(cases: list[Case]) -> str:
    """A digest of a list of cases: their ids and the SHA-256 of their image and label files (16 hex
    characters; the same cases with the same bytes give the same digest, in any order)."""
    lines = sorted(f"{c.case_id} {file_sha256(c.image)} {file_sha256(c.label)}" for c in cases)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
