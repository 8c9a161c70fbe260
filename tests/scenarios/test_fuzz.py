"""Fuzz / property tests: any input ends in success or medseg's own error, never an unhandled
exception. Example counts are bounded so CI stays fast."""
import gzip
import json

import nibabel as nib
import numpy as np
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medseg.config import load_config
from medseg.data.dataset import Case, read_dataset
from medseg.data.fingerprint import inspect_case
from medseg.errors import MedsegError
from tests.conftest import SAMPLE

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
LABELS = {0: "background", 1: "a", 2: "b"}
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)


@FAST
@given(doc=st.dictionaries(st.sampled_from(["modality", "labels", "training", "name", "x"]), json_values, max_size=5))
def test_random_dataset_json(tmp_path_factory, doc):
    root = tmp_path_factory.mktemp("ds")
    (root / "dataset.json").write_text(json.dumps(doc))
    try:
        read_dataset(root)
    except MedsegError:
        pass


@FAST
@given(raw=st.binary(max_size=200))
def test_random_dataset_json_bytes(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("ds")
    (root / "dataset.json").write_bytes(raw)
    try:
        read_dataset(root)
    except MedsegError:
        pass


SECTIONS = ["data", "preprocess", "sampling", "augment", "model", "train", "validation", "tracking", "seed", "zzz"]
KEYS = ["fold", "norm", "lr", "batch_size", "patch_size", "filters", "strides", "epochs", "overlap", "amp", "cache"]


@FAST
@given(doc=st.dictionaries(st.sampled_from(SECTIONS),
                           st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4) | json_values, max_size=4))
def test_random_config_documents(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except MedsegError:
        pass


def _sample_case():
    image = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))[0]
    return image, SAMPLE / "labelsTr" / image.name


@FAST
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
       recompress=st.booleans())
def test_truncated_and_bitflipped_nifti(tmp_path_factory, cut, flips, recompress):
    image, label = _sample_case()
    raw = image.read_bytes()
    if recompress:  # damage the NIfTI stream itself (header and voxels), keep a valid gzip wrapper
        data = bytearray(gzip.decompress(raw))
        for pos, bit in flips:
            data[int(pos * (len(data) - 1))] ^= bit
        raw = gzip.compress(bytes(data[: max(1, int(len(data) * cut))]))
    else:
        data = bytearray(raw)
        for pos, bit in flips:
            data[int(pos * (len(data) - 1))] ^= bit
        raw = bytes(data[: int(len(data) * cut)])
    path = tmp_path_factory.mktemp("nii") / image.name
    path.write_bytes(raw)
    try:
        inspect_case(Case("c", path, label), LABELS)
    except MedsegError:
        pass


@FAST
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=5),
       dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
       zooms=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
       fill=st.sampled_from([0.0, 1.0, 2.0, np.nan, np.inf, 7.0]))
def test_random_nifti_headers_and_arrays(tmp_path_factory, shape, dtype, zooms, fill):
    d = tmp_path_factory.mktemp("nii")
    arr = np.full(shape, fill if np.issubdtype(dtype, np.floating) or np.isfinite(fill) else 0).astype(dtype)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(zooms)
    for name in ("img.nii.gz", "lab.nii.gz"):
        try:
            nib.save(nib.Nifti1Image(arr, affine), d / name)
        except Exception:  # nibabel itself refuses to write it (e.g. a zero affine)
            assume(False)
    try:
        inspect_case(Case("c", d / "img.nii.gz", d / "lab.nii.gz"), LABELS)
    except MedsegError:
        pass
