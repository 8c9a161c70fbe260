"""medseg.data.dicom: a DICOM series is read only when its slices form one regular volume; each
kind of series that is not one is refused by name (copies of a real hippocampus series, edited
with pydicom)."""
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.data.dicom import read_series
from medseg.errors import DataError
from tests.conftest import SHARED

SERIES = SHARED / "dicom" / "Study1" / "13_HCropVolume"
pytestmark = pytest.mark.skipif(not SERIES.is_dir(), reason="../shared/data/dicom is a developer/CI dataset")


def _edited(tmp_path, edit) -> "Path":
    """A copy of the series with ``edit(dataset, k, n)`` applied to slice k of n (reading order)."""
    out = tmp_path / "series"
    shutil.copytree(SERIES, out)
    (uid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(out))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out), uid)
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        edit(ds, k, len(files))
        ds.save_as(f)
    return out


def _column(ds) -> np.ndarray:
    return np.asarray(ds.ImageOrientationPatient[3:], float)


def test_a_sheared_series_is_refused(tmp_path):
    """Each slice shifted 1 mm further along its column direction: a tilted gantry, end to end."""
    def shear(ds, k, n):
        ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) + k * 1.0 * _column(ds))
    with pytest.raises(DataError, match="sheared") as e:
        read_series(_edited(tmp_path, shear))
    assert "degrees off their normal" in str(e.value)


AXIAL = np.array([1.0, 0, 0, 0, 1.0, 0])


def test_the_volume_check_is_highdicoms():
    """Straight, evenly spaced slices pass; a sheared stack, a gap and a duplicate do not."""
    from medseg.data.dicom import check_slice_positions
    straight = np.array([[0.0, 0.0, 2.0 * k] for k in range(10)])
    check_slice_positions(straight, AXIAL, "s")
    with pytest.raises(DataError, match=r"sheared.*last slice is shifted 4.5 mm"):
        check_slice_positions(straight + np.array([[0.0, 0.5 * k, 0.0] for k in range(10)]), AXIAL, "s")
    with pytest.raises(DataError, match="not evenly spaced"):
        check_slice_positions(np.delete(straight, 5, axis=0), AXIAL, "s")
    with pytest.raises(DataError, match="share a position"):
        check_slice_positions(np.insert(straight, 3, straight[3], axis=0), AXIAL, "s")


def _headers(n=6, **changes):
    base = {"0020|0037": "1\\0\\0\\0\\1\\0", "0028|1053": "1", "0028|1052": "0", "0020|0052": "1.2.3"}
    out = [dict(base) for _ in range(n)]
    for tag, value in changes.items():
        out[n // 2][tag.replace("_", "|")] = value
    return out


def test_slices_must_agree_on_orientation_rescale_and_frame_of_reference():
    from medseg.data.dicom import check_series_headers
    check_series_headers(_headers(), "s")
    for tag, value, words in (("0020_0037", "0\\1\\0\\-1\\0\\0", "another in-plane orientation"),
                              ("0028_1053", "0.001", "RescaleSlope 0.001"),
                              ("0028_1052", "-1024", "RescaleIntercept -1024"),
                              ("0020_0052", "1.2.4", "FrameOfReferenceUID")):
        with pytest.raises(DataError, match=words):
            check_series_headers(_headers(**{tag: value}), "s")
