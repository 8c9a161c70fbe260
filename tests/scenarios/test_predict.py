"""Inference: exact input geometry for any orientation, DICOM input, volumes, bad input."""
import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.inference.batch import predict_inputs, collect_inputs
from medseg.inference.predictor import Predictor
from medseg.inference.segmenter import Segmenter
from medseg.models.directory import LoadedModel
from medseg.plan import Plan
from tests.conftest import SAMPLE, shared, tree

SPACING = (0.9, 1.3, 2.2)  # anisotropic, mm


class ReproduceLabels(torch.nn.Module):
    """A 'network' that maps the normalized phantom back to its labels. With the plan's CT
    normalization (clip 0..300, mean 0, std 100) the phantom's 0 / 100 / 300 become 0 / 1 / 3:
    below 0.5 -> background, 0.5..2 -> class 1, above 2 -> class 2."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        bg = (x < 0.5).float()
        c2 = (x >= 2).float()
        return torch.cat([bg, 1 - bg - c2, c2], 1) * 20


def phantom():
    """A (30, 26, 18) label volume with two asymmetric blocks, and its image (100 / 300 intensities)."""
    lab = np.zeros((30, 26, 18), np.uint8)
    lab[3:12, 4:20, 2:9] = 1
    lab[14:27, 6:15, 8:16] = 2
    lab[20:27, 18:24, 3:6] = 1
    return lab, np.where(lab == 1, 100.0, np.where(lab == 2, 300.0, 0.0)).astype(np.float32)


def rotation(deg_z, deg_x):
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


AFFINES = {
    "RAS": np.diag([1, 1, 1]),
    "LPS": np.diag([-1, -1, 1]),
    "LAS": np.diag([-1, 1, 1]),
    "oblique": rotation(20, 12),
}


def _affine(name):
    a = np.eye(4)
    a[:3, :3] = AFFINES[name] @ np.diag(SPACING)
    a[:3, 3] = (-13.7, 41.2, -7.5)
    return a


def reproducing_segmenter(target_spacing=SPACING):
    plan = Plan(modality=["CT"], labels={0: "background", 1: "A", 2: "B"}, target_spacing=tuple(target_spacing),
                patch_size=(16, 16, 16), ct_clip=(0.0, 300.0), ct_mean=0.0, ct_std=100.0)
    model = LoadedModel(network=ReproduceLabels().eval(), plan=plan, spec=None, meta={})
    return Segmenter(Predictor(model, overlap=0.5, sw_batch_size=2))


@pytest.mark.parametrize("orientation", list(AFFINES))
def test_labels_land_on_the_input_voxels_with_exact_geometry(orientation, tmp_path):
    lab, img = phantom()
    path = tmp_path / "in" / f"case_{orientation}.nii.gz"
    path.parent.mkdir()
    src = nib.Nifti1Image(img, _affine(orientation))
    src.header.set_qform(_affine(orientation), code=1)
    src.header.set_sform(_affine(orientation), code=2)
    nib.save(src, path)
    summary = predict_inputs(reproducing_segmenter(), collect_inputs(path.parent), tmp_path / "out")
    assert summary.done == [f"case_{orientation}"]
    out = nib.load(tmp_path / "out" / f"case_{orientation}_seg.nii.gz")
    ref = nib.load(path)
    assert out.shape == ref.shape
    assert np.array_equal(out.affine, ref.affine)
    assert np.array_equal(out.header.get_qform(), ref.header.get_qform())
    assert np.array_equal(out.header.get_sform(), ref.header.get_sform())
    assert out.header["qform_code"] == ref.header["qform_code"] == 1
    assert out.header["sform_code"] == ref.header["sform_code"] == 2
    assert out.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(out.dataobj), lab)


def test_resampled_inference_maps_back_onto_the_input_grid(tmp_path):
    lab, img = phantom()
    seg = reproducing_segmenter(target_spacing=(1.0, 1.0, 1.0))  # resampling there and back
    result = seg.predict(img, affine=_affine("oblique"))
    assert result.labels.shape == lab.shape
    # class 2 (the brightest block): same place, same size, after two bilinear resamplings
    p2, r2 = result.labels == 2, lab == 2
    assert 2 * np.sum(p2 & r2) / (p2.sum() + r2.sum()) > 0.95
    assert np.abs(np.argwhere(p2).mean(0) - np.argwhere(r2).mean(0)).max() < 0.1  # voxels
    # class 1 is found where it is (partial-volume edges of class 2 also fall in class 1's intensity band)
    assert np.sum((result.labels == 1) & (lab == 1)) / np.sum(lab == 1) > 0.95


def test_largest_component_keeps_the_bigger_block():
    lab, img = phantom()
    base = reproducing_segmenter()
    result = Segmenter(base.predictor, largest_component=True).predict(img, affine=_affine("LAS"))
    expected = lab.copy()
    expected[20:27, 18:24, 3:6] = 0  # the smaller of class 1's two blocks
    assert np.array_equal(result.labels, expected)


def test_volumes_csv_is_voxels_times_voxel_volume(tmp_path):
    lab, img = phantom()
    for name in ("RAS", "oblique"):
        nib.save(nib.Nifti1Image(img, _affine(name)), tmp_path / f"{name}.nii.gz")
    predict_inputs(reproducing_segmenter(), collect_inputs(tmp_path), tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert len(rows) == 4
    voxel_ml = np.prod(SPACING) / 1000
    for r in rows:
        assert int(r["voxels"]) == int((lab == int(r["label"])).sum())
        assert float(r["volume_ml"]) == pytest.approx(int(r["voxels"]) * voxel_ml, rel=1e-5)


def test_predict_cli_skips_existing_and_overwrites_on_request(trained, tmp_path):
    model = str(trained["run_dir"] / "model")
    inp = tmp_path / "in"
    inp.mkdir()
    for p in sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copy(p, inp)
    runner = CliRunner()
    r = runner.invoke(app, ["predict", "-m", model, "-i", str(inp), "-o", str(tmp_path / "out"), "--quiet",
                            "--save-probabilities"])
    assert r.exit_code == 0, r.output
    outs = sorted((tmp_path / "out").glob("*_seg.nii.gz"))
    assert len(outs) == 2
    for o in outs:
        src = nib.load(inp / o.name.replace("_seg", ""))
        seg = nib.load(o)
        assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
    probs = np.load(sorted((tmp_path / "out").glob("*_probabilities.npz"))[0])["probabilities"]
    assert probs.dtype == np.float16 and probs.shape[0] == 3
    stamp = outs[0].stat().st_mtime_ns
    r = runner.invoke(app, ["predict", "-m", model, "-i", str(inp), "-o", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0 and outs[0].stat().st_mtime_ns == stamp and "2" in r.output
    r = runner.invoke(app, ["predict", "-m", model, "-i", str(inp), "-o", str(tmp_path / "out"), "--quiet",
                            "--overwrite", "--largest-component", "--tta"])
    assert r.exit_code == 0 and outs[0].stat().st_mtime_ns != stamp
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_dicom_convert_and_predict(trained, tmp_path):
    dicom = shared("dicom")
    runner = CliRunner()
    big = dicom / "Study3" / "11-T1post-18670"
    r = runner.invoke(app, ["convert", "-i", str(big), "-o", str(tmp_path / "t1.nii.gz")])
    assert r.exit_code == 0, r.output
    img = nib.load(tmp_path / "t1.nii.gz")
    assert sorted(img.shape) == sorted((280, 320, 22))
    assert np.allclose(sorted(img.header.get_zooms()), sorted((0.6875, 0.6875, 6.5)), atol=0.01)
    # a folder of DICOM series folders
    r = runner.invoke(app, ["predict", "-m", str(trained["run_dir"] / "model"), "-i", str(dicom / "Study3"),
                            "-o", str(tmp_path / "out"), "--overlap", "0", "--quiet"])  # geometry, not quality
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*_seg.nii.gz")) == [
        "11-T1post-18670_seg.nii.gz", "11_HCropVolume_seg.nii.gz"]
    seg = nib.load(tmp_path / "out" / "11-T1post-18670_seg.nii.gz")
    assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)


def test_several_series_need_series_uid(tmp_path):
    dicom = shared("dicom")
    both = tmp_path / "both"
    both.mkdir()
    for d in ("Study1/13_HCropVolume", "Study2/14_HCropVolume"):
        for f in (dicom / d).iterdir():
            shutil.copy(f, both / f"{d.split('/')[0]}_{f.name}")
    r = CliRunner().invoke(app, ["convert", "-i", str(both), "-o", str(tmp_path / "x.nii.gz")])
    assert r.exit_code != 0
    msg = str(r.exception)
    assert "2 DICOM series found" in msg and "--series-uid" in msg and "1.2.826.0.1.3680043.8.498.1011" in msg
    assert not (tmp_path / "x.nii.gz").exists()
    uid = "1.2.826.0.1.3680043.8.498.10112548596522579645160189153146185462"
    r = CliRunner().invoke(app, ["convert", "-i", str(both), "-o", str(tmp_path / "x.nii.gz"), "--series-uid", uid])
    assert r.exit_code == 0 and (tmp_path / "x.nii.gz").exists()


def _bad_inputs(tmp_path):
    lab, img = phantom()
    d = {}
    d["text file"] = tmp_path / "notes.nii.gz"
    d["text file"].write_bytes(b"not an image" * 100)
    d["2D image"] = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(img[:, :, 5], np.eye(4)), d["2D image"])
    d["4D with 3 channels"] = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([img] * 3, -1), np.eye(4)), d["4D with 3 channels"])
    return d


@pytest.mark.parametrize("kind", ["text file", "2D image", "4D with 3 channels"])
def test_bad_volume_is_a_clear_error(kind, tmp_path):
    path = _bad_inputs(tmp_path)[kind]
    with pytest.raises(Exception) as e:
        reproducing_segmenter().predict(path)
    assert str(path) in str(e.value)
    assert type(e.value).__name__ == "DataError"


def test_one_bad_case_does_not_stop_the_others(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))[0], inp / "good.nii.gz")
    (inp / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    r = CliRunner().invoke(app, ["predict", "-m", str(trained["run_dir"] / "model"), "-i", str(inp),
                                 "-o", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 1
    assert (tmp_path / "out" / "good_seg.nii.gz").exists() and not (tmp_path / "out" / "broken_seg.nii.gz").exists()
    assert "broken" in r.output or "broken" in str(r.stderr_bytes or b"")


def test_refused_setups_write_nothing(trained, tmp_path):
    runner = CliRunner()
    model = trained["run_dir"] / "model"
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))[0], inp)
    before = tree(tmp_path)
    # output inside input
    r = runner.invoke(app, ["predict", "-m", str(model), "-i", str(inp), "-o", str(inp / "out")])
    assert r.exit_code != 0 and "inside the input folder" in str(r.exception)
    # empty DICOM folder
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["convert", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "e.nii.gz")])
    assert r.exit_code != 0 and "no DICOM series" in str(r.exception) and "empty" in str(r.exception)
    # incomplete model directory
    broken = tmp_path / "model_incomplete"
    shutil.copytree(model, broken)
    (broken / "weights.pt").unlink()
    r = runner.invoke(app, ["predict", "-m", str(broken), "-i", str(inp), "-o", str(tmp_path / "o2")])
    assert r.exit_code != 0 and "weights.pt is missing" in str(r.exception)
    # model from an incompatible (newer) version
    newer = tmp_path / "model_newer"
    shutil.copytree(model, newer)
    meta = json.loads((newer / "medseg_model.json").read_text())
    meta["format_version"] = 99
    (newer / "medseg_model.json").write_text(json.dumps(meta))
    r = runner.invoke(app, ["predict", "-m", str(newer), "-i", str(inp), "-o", str(tmp_path / "o3")])
    assert r.exit_code != 0 and "format version 99" in str(r.exception)
    after = tree(tmp_path) - {p for p in tree(tmp_path) if p.startswith(("model_", "empty"))}
    assert after == before


def test_python_api_example_in_readme_runs(trained, tmp_path, monkeypatch):
    """The README's Python example, executed as written (with the test's model directory)."""
    from tests.conftest import ROOT
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- api-example -->")[1].split("```python")[1].split("```")[0]
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MEDSEG_MODEL", str(trained["run_dir"] / "model"))
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["result"].labels.shape == nib.load(SAMPLE / "imagesTr" / "hippocampus_004.nii.gz").shape


def test_dicom_seg_output_reproduces_the_nifti_labels_voxel_for_voxel(trained, tmp_path):
    """predict --output-format dicom-seg on a real DICOM series: read back with highdicom, the SEG's
    frames, mapped to the source instances they reference, give the NIfTI output's labels exactly."""
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    series = shared("dicom") / "Study1" / "13_HCropVolume"
    model = str(trained["run_dir"] / "model")
    common = ["predict", "-m", model, "-i", str(series), "--overlap", "0", "--quiet"]
    assert CliRunner().invoke(app, [*common, "-o", str(tmp_path / "nii")]).exit_code == 0
    r = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "seg"), "--output-format", "dicom-seg"])
    assert r.exit_code == 0, r.output
    labels = np.asarray(nib.load(tmp_path / "nii" / f"{series.name}_seg.nii.gz").dataobj)  # (X, Y, Z)
    seg = hd.seg.segread(tmp_path / "seg" / f"{series.name}_seg.dcm")
    (uid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(series))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series), uid)  # slice order
    sop_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, combine_segments=True)
    assert frames.shape == (labels.shape[2], labels.shape[1], labels.shape[0])
    assert np.array_equal(frames.transpose(2, 1, 0), labels)
    assert labels.max() > 0  # the comparison covered real segments, not only background
    names = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
    assert names == {1: "Anterior", 2: "Posterior"}
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Hippocampus"
    assert seg.SeriesInstanceUID != pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID


@pytest.mark.parametrize("output_format", ["dicom-seg", "rtstruct"])
def test_dicom_outputs_of_nifti_inputs_are_refused_before_any_work(output_format, tmp_path):
    from medseg.cli import run_cli

    r = run_cli(["predict", "-m", str(tmp_path / "no-model-needed"), "-i", str(SAMPLE / "imagesTr"),
                 "-o", str(tmp_path / "out"), "--output-format", output_format, "--quiet"])
    assert r == 2  # refused before the model is even looked for
    assert not (tmp_path / "out").exists()


def _rasterize(contours, files, shape) -> np.ndarray:
    """An RTSTRUCT ROI's closed planar contours back on the series grid, (X, Y, Z) as medseg's labels:
    a voxel is inside a polygon when its centre is (skimage.draw.polygon), and nested contours
    (holes, islands in holes) combine by parity, as planning systems fill them."""
    import pydicom
    from skimage.draw import polygon

    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(src)}
    row_mm, col_mm = (float(v) for v in src[0].PixelSpacing)
    iop = np.asarray(src[0].ImageOrientationPatient, float)  # along a row (columns grow), along a column
    out = np.zeros(shape, bool)
    for c in contours:
        k = index[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
        xyz = np.asarray(c.ContourData, float).reshape(-1, 3) - np.asarray(src[k].ImagePositionPatient, float)
        col, row = xyz @ iop[:3] / col_mm, xyz @ iop[3:] / row_mm
        plane = np.zeros((shape[1], shape[0]), bool)  # (rows, columns)
        plane[polygon(row, col, shape=plane.shape)] = True
        out[:, :, k] ^= plane.T
    return out


def test_rtstruct_output_rasterizes_back_to_the_nifti_labels(trained, tmp_path):
    """predict --output-format rtstruct on a real hippocampus DICOM series: each ROI's contours,
    rasterized on the series grid, give Dice >= 0.95 against the NIfTI output's label (1.0 measured
    on all three series of ../shared/data/dicom; one here, for the suite's time)."""
    import pydicom
    import SimpleITK as sitk

    model = trained["run_dir"] / "model"
    dices = {}
    for series in [shared("dicom") / "Study1" / "13_HCropVolume"]:
        common = ["predict", "-m", str(model), "-i", str(series), "--quiet"]
        assert CliRunner().invoke(app, [*common, "-o", str(tmp_path / "nii")]).exit_code == 0
        r = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "rt"), "--output-format", "rtstruct"])
        assert r.exit_code == 0, r.output
        labels = np.asarray(nib.load(tmp_path / "nii" / f"{series.name}_seg.nii.gz").dataobj)
        ds = pydicom.dcmread(tmp_path / "rt" / f"{series.name}_rtstruct.dcm")
        (uid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(series))
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series), uid)
        assert ds.Modality == "RTSTRUCT" and ds.FrameOfReferenceUID == pydicom.dcmread(files[0]).FrameOfReferenceUID
        names = {int(roi.ROINumber): roi.ROIName for roi in ds.StructureSetROISequence}
        assert sorted(names.values()) == ["Anterior", "Posterior"]
        for roi in ds.ROIContourSequence:
            name = names[int(roi.ReferencedROINumber)]
            ref = labels == {"Anterior": 1, "Posterior": 2}[name]
            back = _rasterize(roi.ContourSequence, files, labels.shape)
            dices[series.name, name] = 2 * (back & ref).sum() / (back.sum() + ref.sum())
            assert ref.sum() > 0
    print("RTSTRUCT Dice per ROI:", dices)
    assert len(dices) == 2 and min(dices.values()) >= 0.95, dices
