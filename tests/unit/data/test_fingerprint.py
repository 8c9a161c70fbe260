"""medseg.data.fingerprint: the dataset fingerprint, its cache, and the patch size derived from it."""
import numpy as np

from medseg.data import compute_fingerprint, load_or_compute_fingerprint, read_dataset
from tests.conftest import SAMPLE, copy_msd


def test_fingerprint_and_derived_plan(hippo_plan):
    spec = read_dataset(SAMPLE)
    fp = compute_fingerprint(spec)
    assert fp["num_cases"] == 16 and fp["median_spacing"] == [1.0, 1.0, 1.0]
    total = sum(np.prod(c["shape"]) for c in fp["cases"].values())
    assert sum(fp["label_voxels"].values()) == total
    # default patch: the median shape rounded up to multiples of 8
    assert all(p % 8 == 0 and p >= s for p, s in zip(hippo_plan.patch_size, fp["median_shape"]))
    assert hippo_plan.ct_clip is None


def test_fingerprint_is_cached(tmp_path):
    spec = read_dataset(SAMPLE)
    fp1, path = load_or_compute_fingerprint(spec, tmp_path)
    stamp = path.stat().st_mtime_ns
    fp2, path2 = load_or_compute_fingerprint(spec, tmp_path)
    assert path2 == path and path.stat().st_mtime_ns == stamp and fp1 == fp2


def test_a_damaged_fingerprint_cache_is_recomputed(tmp_path):
    from medseg.data import read_dataset
    from medseg.data.fingerprint import load_or_compute_fingerprint
    spec = read_dataset(copy_msd(SAMPLE, tmp_path / "ds", n=3))
    first, path = load_or_compute_fingerprint(spec, tmp_path / "cache")
    for damage in ("{not json", "[]", '{"version": 1}', "\xff\xfe"):
        path.write_text(damage, encoding="latin-1")
        again, _ = load_or_compute_fingerprint(spec, tmp_path / "cache")
        assert again == first


def test_case_ids_that_become_one_mlflow_key_are_refused(tmp_path):
    """`x+1` and `x_1` are both logged as `final_case_dice/x_1/...`: one case's Dice would overwrite
    the other's, and the study reads those keys."""
    import json
    import shutil

    import pytest

    from medseg.data import read_dataset
    from medseg.errors import DataError
    from tests.conftest import SAMPLE, copy_msd
    ds = copy_msd(SAMPLE, tmp_path / "ds", n=2)
    doc = json.loads((ds / "dataset.json").read_text())
    for entry, name in zip(doc["training"], ("x+1", "x_1")):
        for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
            new = f"./{folder}/{name}.nii.gz"
            shutil.move(ds / entry[key], ds / new)
            entry[key] = new
    (ds / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"'x\+1' and 'x_1' become the same MLflow key 'x_1'"):
        read_dataset(ds)
