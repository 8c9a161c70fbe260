"""Careless and hostile input through the installed ``medseg`` command: the exit code says what
happened (0 ok, 1 some cases failed, 2 bad input or usage, 130 interrupted), every failure is one
``error:`` line without a traceback, and nothing is left half-written."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.errors import EXIT_FAILED_CASES, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from tests.conftest import ROOT, SAMPLE, copy_msd, fresh_store, tree

MEDSEG = str(Path(sys.executable).with_name("medseg"))  # the installed console script
DICOM = ROOT.parent / "shared" / "data" / "dicom" / "Study1" / "13_HCropVolume"


def medseg(*args, cwd=None, installed: bool = False) -> subprocess.CompletedProcess:
    """Run ``medseg args``: through the installed console script in a subprocess (``installed``), or
    through the same entry point's :func:`medseg.cli.run_cli` in this process (no 5-second start-up)."""
    argv = [str(a) for a in args]
    if installed:
        return subprocess.run([MEDSEG, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)
    from medseg.cli import run_cli
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd or here)
        with redirect_stdout(out), redirect_stderr(err):
            code = run_cli(argv)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def assert_refused(proc: subprocess.CompletedProcess, *words: str, code: int = EXIT_USAGE) -> None:
    """Exit ``code``, no traceback, and one ``error:`` message holding every one of ``words``."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    message = proc.stderr[proc.stderr.index("error:"):]  # one error (a config error lists each bad key below it)
    for w in words:
        assert w in message, message


def test_the_installed_command_exists():
    assert Path(MEDSEG).is_file(), "pip install -e . installs the medseg console script beside python"


@pytest.mark.parametrize("args, words", [
    (["predict"], ["--model"]),
    (["predict", "-m", "x", "-i", "y", "-o", "z", "--overlap", "1.5"], ["--overlap"]),
    (["train", "--fold", "abc"], ["--fold"]),
    (["evaluate", "-m", "x", "-d", "y", "--device", "foo"], ["--device", "foo"]),
])
def test_the_installed_command_exits_2_with_one_line(args, words):
    assert_refused(medseg(*args, cwd=ROOT, installed=True), *words)


@pytest.mark.parametrize("args, words", [
    (["predict"], ["--model"]),
    (["predict", "-m", "x", "-i", "y", "-o", "z", "--overlap", "1.5"], ["--overlap"]),
    (["predict", "-m", "x", "-i", "y", "-o", "z", "--sw-batch-size", "0"], ["--sw-batch-size"]),
    (["predict", "--no-such-option"], ["--no-such-option"]),
    (["no-such-command"], ["no-such-command"]),
    (["train", "--fold", "abc"], ["--fold"]),
    (["sweep", "--config", "configs/demo.yaml", "--batch-sizes", "2,2"], ["--batch-sizes", "more than once"]),
    (["evaluate", "-m", "x", "-d", "y", "--device", "foo"], ["--device", "foo"]),
    (["evaluate", "-m", "x", "-d", "y", "--device", "cuda:7"], ["--device"]),
])
def test_usage_errors_are_one_line_and_exit_2(args, words):
    assert_refused(medseg(*args, cwd=ROOT), *words)


def test_debug_shows_the_traceback():
    proc = medseg("--debug", "evaluate", "-m", "x", "-d", "y", "--device", "foo", installed=True)
    assert proc.returncode == EXIT_USAGE and "Traceback" in proc.stderr


@pytest.mark.parametrize("yaml_text, key", [
    ("sampling:\n  patch_size: [0, 8, 8]\n", "sampling.patch_size"),
    ("sampling:\n  patch_size: [-8, 8, 8]\n", "sampling.patch_size"),
    ("model:\n  strides: [1, 0, 2, 2]\n", "model.strides"),
    ("model:\n  kernel_size: 4\n", "model.kernel_size"),
    ("model:\n  filters: [16, 0, 64, 128]\n", "model.filters"),
    ("model:\n  norm: group\n  num_groups: 3\n", "model.num_groups"),
    ("sampling:\n  patch_size: [20, 20, 20]\n", "patch size"),
    ("tracking:\n  run_name: ../../elsewhere\n", "tracking.run_name"),
])
def test_config_values_that_would_crash_later_are_refused_at_the_edge(tmp_path, yaml_text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    proc = medseg("train", "--config", cfg, "--data", SAMPLE, "--set", f"output_dir={tmp_path / 'runs'}")
    assert_refused(proc, key)
    assert not (tmp_path / "runs").exists()


def test_a_patch_that_cannot_fit_in_memory_is_refused_before_the_run_starts(tmp_path):
    proc = medseg("train", "--config", ROOT / "configs/demo.yaml", "--data", SAMPLE,
                  "--set", "sampling.patch_size=[1024,1024,512]", "--set", f"output_dir={tmp_path / 'runs'}",
                  "--set", f"data.cache_dir={tmp_path / 'cache'}", "--tracking-uri", f"sqlite:///{tmp_path / 's.db'}")
    assert_refused(proc, "sampling.patch_size", "GiB per training iteration")
    assert not (tmp_path / "runs").exists()


def test_yaml_alias_bomb_is_refused_quickly_without_echoing_it(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(lines) + "\n")  # 9**9 = 387 million strings once expanded
    proc = medseg("train", "--config", cfg)
    assert_refused(proc, "anchors")
    assert len(proc.stderr) < 1000


def test_output_dir_that_is_a_file_is_refused_and_no_run_is_left(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    proc = medseg("train", "--config", ROOT / "configs/demo.yaml", "--data", SAMPLE, "--tracking-uri", uri,
                  "--set", f"output_dir={blocker}", "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert_refused(proc, "output_dir", "file")
    assert blocker.read_text() == "not a folder"
    if (tmp_path / "store.db").exists():  # no MLflow run was started (none left RUNNING)
        from mlflow import MlflowClient
        client = MlflowClient(tracking_uri=uri)
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_report_folder_that_is_a_file_is_refused_before_any_training(tmp_path):
    blocker = tmp_path / "report"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    proc = medseg("sweep", "--config", ROOT / "configs/demo.yaml", "--data", SAMPLE, "--tracking-uri", uri,
                  "--set", f"output_dir={tmp_path / 'runs'}", "--norms", "instance", "--batch-sizes", "1",
                  "--seeds", "1", "--report-dir", blocker / "sub")
    assert_refused(proc, "--report-dir", str(blocker), "is a file")
    assert blocker.read_text() == "not a folder"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store.db").exists()  # nothing trained or logged
    proc = medseg("report", "--experiment", "x", "--tracking-uri", uri, "--output", blocker)
    assert_refused(proc, "--output", str(blocker), "is a file")


def _dataset_with(tmp_path, edit) -> Path:
    ds = copy_msd(SAMPLE, tmp_path / "ds", n=3)
    doc = json.loads((ds / "dataset.json").read_text())
    edit(ds, doc)
    (ds / "dataset.json").write_text(json.dumps(doc))
    return ds


def test_two_labels_with_one_name_are_refused(tmp_path):
    ds = _dataset_with(tmp_path, lambda ds, doc: doc["labels"].update({"2": doc["labels"]["1"]}))
    assert_refused(medseg("fingerprint", "--data", ds), "dataset.json", "same name")


def test_label_names_equal_as_mlflow_keys_are_refused(tmp_path):
    ds = _dataset_with(tmp_path, lambda ds, doc: doc["labels"].update({"1": "head (a)", "2": "head [a]"}))
    assert_refused(medseg("fingerprint", "--data", ds), "MLflow")


def _qform_sform_disagree(path: Path) -> None:
    img = nib.load(path)
    shifted = img.affine.copy()
    shifted[:3, 3] += 3.0
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    out.set_sform(img.affine, code=1)
    out.set_qform(shifted, code=1)
    nib.save(out, path)


def test_qform_and_sform_that_disagree_are_refused(tmp_path):
    ds = copy_msd(SAMPLE, tmp_path / "ds", n=3)
    image = sorted((ds / "imagesTr").iterdir())[0]
    _qform_sform_disagree(image)
    assert_refused(medseg("fingerprint", "--data", ds), image.name, "qform and sform disagree")


def test_a_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path):
    ds = copy_msd(SAMPLE, tmp_path / "ds", n=3)
    image = sorted((ds / "imagesTr").iterdir())[0]
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 512  # a 1 KB file
    bomb = image.with_name(image.name.replace(".nii.gz", ".nii"))
    image.unlink()
    bomb.write_bytes(raw)
    doc = json.loads((ds / "dataset.json").read_text())
    doc["training"][0]["image"] = f"./imagesTr/{bomb.name}"
    (ds / "dataset.json").write_text(json.dumps(doc))
    proc = medseg("fingerprint", "--data", ds)
    assert_refused(proc, bomb.name, "4000 x 4000 x 4000")


@pytest.mark.skipif(not DICOM.is_dir(), reason="../shared/data/dicom is a developer/CI dataset")
def test_dicom_series_with_a_missing_slice_is_refused_by_convert_and_predict(tmp_path, trained):
    series = tmp_path / "series"
    shutil.copytree(DICOM, series)
    import SimpleITK as sitk
    (uid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(series))
    ordered = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series), uid)  # sorted along the slice normal
    Path(ordered[len(ordered) // 2]).unlink()  # a slice from the middle of the stack goes missing
    out = tmp_path / "out.nii.gz"
    assert_refused(medseg("convert", "-i", series, "-o", out, installed=True), "not evenly spaced")
    assert not out.exists()
    model = trained["run_dir"] / "model"
    proc = medseg("predict", "-m", model, "-i", series, "-o", tmp_path / "pred")
    assert proc.returncode == EXIT_FAILED_CASES and "not evenly spaced" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "pred").glob("*_seg.nii.gz"))


def test_predict_exit_code_says_a_case_failed_and_the_others_were_done(tmp_path, trained):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((SAMPLE / "imagesTr").iterdir())[0]
    shutil.copy(good, inputs / good.name)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file")
    proc = medseg("predict", "-m", trained["run_dir"] / "model", "-i", inputs, "-o", tmp_path / "out", installed=True)
    assert proc.returncode == EXIT_FAILED_CASES, proc.stderr
    assert "broken" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "out" / good.name.replace(".nii.gz", "_seg.nii.gz")).is_file()


def test_predict_refuses_an_image_that_resampling_would_blow_up(tmp_path, trained):
    img = nib.load(sorted((SAMPLE / "imagesTr").iterdir())[0])
    tiny = nib.Nifti1Image(np.asarray(img.dataobj)[:20, :20, :20].astype(np.float32), np.diag([20.0, 20, 20, 1]))
    path = tmp_path / "in" / "coarse.nii.gz"
    path.parent.mkdir()
    nib.save(tiny, path)
    proc = medseg("predict", "-m", trained["run_dir"] / "model", "-i", path, "-o", tmp_path / "out")
    assert proc.returncode == EXIT_FAILED_CASES
    assert "resampling this volume" in proc.stderr and "check the header's voxel spacing" in proc.stderr


def test_predict_warns_about_a_blank_image(tmp_path, trained):
    img = nib.load(sorted((SAMPLE / "imagesTr").iterdir())[0])
    path = tmp_path / "in" / "blank.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), path)
    proc = medseg("predict", "-m", trained["run_dir"] / "model", "-i", path, "-o", tmp_path / "out")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "warning:" in proc.stderr and "blank or constant" in proc.stderr


def test_evaluate_refuses_a_transposed_or_shifted_label(tmp_path, trained):
    ds = copy_msd(SAMPLE, tmp_path / "ds", n=2)
    label = sorted((ds / "labelsTr").iterdir())[0]
    img = nib.load(label)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), img.affine), label)
    model = trained["run_dir"] / "model"
    assert_refused(medseg("evaluate", "-m", model, "-d", ds, "-o", tmp_path / "e.csv"), label.name, "shape")
    shifted = img.affine.copy()
    shifted[:3, 3] += 3.0
    nib.save(nib.Nifti1Image(data, shifted), label)
    assert_refused(medseg("evaluate", "-m", model, "-d", ds, "-o", tmp_path / "e.csv"), label.name, "affine")
    assert not (tmp_path / "e.csv").exists()


def test_malformed_model_metadata_is_an_error_not_a_traceback(tmp_path, trained):
    model = tmp_path / "model"
    shutil.copytree(trained["run_dir"] / "model", model)
    meta = json.loads((model / "medseg_model.json").read_text())
    for broken in ([1, 2, 3], {**meta, "network": {"filters": "many"}}, {**meta, "plan": None}):
        (model / "medseg_model.json").write_text(json.dumps(broken))
        assert_refused(medseg("predict", "-m", model, "-i", SAMPLE / "imagesTr", "-o", tmp_path / "out"),
                       "medseg_model.json")
    assert not (tmp_path / "out").exists() or not tree(tmp_path / "out")


def test_resume_refuses_changes_that_would_change_the_run(tmp_path, trained):
    run_dir = trained["run_dir"]
    before = tree(run_dir)
    assert_refused(medseg("train", "--resume", run_dir, "--set", "train.batch_size=4"), "train.batch_size")
    assert_refused(medseg("train", "--resume", run_dir, "--config", ROOT / "configs/demo.yaml"), "--config")
    assert tree(run_dir) == before


def test_resume_on_other_data_is_refused(tmp_path, trained):
    other = copy_msd(SAMPLE, tmp_path / "other", n=8)
    uri = f"sqlite:///{trained['work'] / 'store.db'}"
    before = tree(trained["run_dir"])
    assert_refused(medseg("train", "--resume", trained["run_dir"], "--tracking-uri", uri, "--data", other),
                   "resume on the data the run started with")
    assert tree(trained["run_dir"]) == before


def test_unknown_tracking_uri_scheme_is_one_line(tmp_path):
    proc = medseg("train", "--config", ROOT / "configs/demo.yaml", "--data", SAMPLE, "--tracking-uri", "foo://bar",
                  "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert_refused(proc, "foo://bar")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_ctrl_c_is_exit_130_with_a_message(monkeypatch, capsys):
    """The boundary itself (a SIGINT's timing through a subprocess would make a flaky test)."""
    from medseg import cli
    from medseg.inference import segmenter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segmenter.Segmenter, "load", interrupted)
    code = cli.run_cli(["predict", "-m", str(ROOT), "-i", str(SAMPLE / "imagesTr"), "-o", "/tmp/never-written"])
    assert code == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err


def _tiny_train(ds: Path, work: Path, *extra) -> subprocess.CompletedProcess:
    return medseg("train", "--config", ROOT / "configs/demo.yaml", "--data", ds, "--quiet",
                  "--tracking-uri", fresh_store(work / "store.db"), "--set", f"output_dir={work / 'runs'}",
                  "--set", f"data.cache_dir={work / 'cache'}", "--set", "train.epochs=1",
                  "--set", "train.iterations_per_epoch=2", "--set", "validation.hd95=false",
                  "--set", "data.num_folds=3", "--set", "tracking.log_model=false", *extra)


def test_label_names_mlflow_refuses_train_and_a_run_name_used_twice_gets_its_own_folder(tmp_path):
    """'Anterior (head)' used to crash training after the first validation (MLflow refuses the key);
    a second run with the same name used to collide with the first one's folder."""
    ds = _dataset_with(tmp_path, lambda ds, doc: doc["labels"].update({"1": "Anterior (head)"}))
    for _ in range(2):
        proc = _tiny_train(ds, tmp_path, "--set", "tracking.run_name=same")
        assert proc.returncode == EXIT_OK, proc.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same", "same-2"]
    assert all((p / "model" / "medseg_model.json").is_file() for p in (tmp_path / "runs").iterdir())
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert "val_dice_Anterior _head_" in run.data.metrics
        assert any(k.startswith("final_case_dice/") and k.endswith("/Anterior _head_") for k in run.data.metrics)
        assert run.data.metrics["final_batch_dependence_eval"] < 1e-3  # a one-case fold still measures it


def test_an_output_that_is_a_folder_is_refused_and_the_folder_kept(tmp_path):
    if not DICOM.is_dir():
        pytest.skip("../shared/data/dicom is a developer/CI dataset")
    target = tmp_path / "out.nii.gz"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    proc = medseg("convert", "-i", DICOM, "-o", target)
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr, proc.stderr
    assert str(target) in proc.stderr
    assert (target / "keep.txt").read_text() == "mine"


GARBAGE = ["", "-1", "0", "1.5", "abc", "1e999", "nan", "../..", "/nonexistent/x", "sqlite:///nonexistent/x.db",
           "foo://bar", "a" * 300, "--", "-", "\u00e9\u00e8", "2,2", "instance,foo", "{x}", "cuda:9"]
COMMANDS = {
    "train": ["--config", "--data", "--resume", "--fold", "--set", "--experiment", "--tracking-uri"],
    "evaluate": ["--model", "--data", "--output", "--device"],
    "predict": ["--model", "--input", "--output", "--overlap", "--sw-batch-size", "--device", "--series-uid"],
    "convert": ["--input", "--output", "--series-uid"],
    "fingerprint": ["--data"],
    "sweep": ["--config", "--data", "--norms", "--batch-sizes", "--seeds", "--budget-samples", "--jobs",
              "--evaluations", "--lr-rule", "--executor"],
    "report": ["--experiment", "--sweep", "--tracking-uri", "--output", "--plateau-delta", "--negligible"],
}


@settings(max_examples=int(os.environ.get("MEDSEG_FUZZ_EXAMPLES", 40)), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_command_lines_end_in_a_documented_exit_code_without_a_traceback(tmp_path_factory, data):
    """Property: any command line made of medseg's commands and options with garbage values (every
    path missing, so no real work starts) ends in exit 0 (help) or 2 with one ``error:`` message:
    never an internal error (3), a traceback or an exception escaping the entry point."""
    command = data.draw(st.sampled_from(sorted(COMMANDS)))
    options = data.draw(st.lists(st.sampled_from(COMMANDS[command] + ["--help", "--bogus"]), max_size=4))
    argv = [command]
    for option in options:
        argv += [option] if option in ("--help", "--bogus") else [option, data.draw(st.sampled_from(GARBAGE))]
    tmp_path = tmp_path_factory.mktemp("cwd")  # a fresh working directory per example
    proc = medseg(*argv, cwd=tmp_path)
    assert proc.returncode in (EXIT_OK, EXIT_USAGE), (argv, proc.stderr)
    assert "Traceback" not in proc.stderr, (argv, proc.stderr)
    if proc.returncode == EXIT_USAGE:
        assert proc.stderr.count("error:") == 1, (argv, proc.stderr)
    assert not list(tmp_path.iterdir()), (argv, "a refused command wrote into the working directory")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA (the child fails)")
def test_a_sweep_whose_child_fails_exits_1_and_says_which(tmp_path):
    proc = medseg("sweep", "--config", ROOT / "configs/demo.yaml", "--data", SAMPLE, "--norms", "instance",
                  "--batch-sizes", "1", "--seeds", "1", "--budget-samples", "2", "--evaluations", "1",
                  "--tracking-uri", fresh_store(tmp_path / "store.db"), "--set", f"output_dir={tmp_path / 'runs'}",
                  "--set", "train.device=cuda", "--report-dir", tmp_path / "report")
    assert proc.returncode == EXIT_FAILED_CASES, proc.stdout + proc.stderr
    assert "instance_bs1_seed0" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_plan_prints_and_writes_the_planned_network(tmp_path, trained):
    """`medseg plan` on the embedded sample (its fingerprint cached by the shared training): the
    table, a reason per decision, the JSON; a folder as --output is refused with one line and
    nothing written."""
    out = tmp_path / "plan.json"
    proc = medseg("plan", "--data", SAMPLE, "--device", "cuda", "--output", out, "--cache-dir",
                  trained["work"] / "cache", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    plan = json.loads(out.read_text())
    assert plan["filters"][0] == 32 and len(plan["filters"]) == len(plan["strides"]) == len(plan["kernel_sizes"])
    assert plan["batch_size"] >= 2 and all(p % 8 == 0 for p in plan["patch_size"])
    assert "target spacing" in proc.stdout and "filters" in proc.stdout and len(plan["reasons"]) >= 5
    (tmp_path / "folder").mkdir()
    assert_refused(medseg("plan", "--data", SAMPLE, "--output", tmp_path / "folder", cwd=tmp_path), "folder")
    assert not list((tmp_path / "folder").iterdir())


def test_ui_on_a_port_in_use_exits_2_with_one_line(tmp_path):
    """The port is checked first: before the store is opened (here it does not even exist)."""
    import socket
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_refused(medseg("ui", "--tracking-uri", uri, "--port", port), f"port {port}", "--port")
    assert not (tmp_path / "store.db").exists()


def test_a_sweep_id_that_is_not_a_plain_name_is_refused_before_any_work(tmp_path):
    proc = medseg("sweep", "--config", ROOT / "configs/demo.yaml", "--data", SAMPLE, "--sweep-id", "../../../X",
                  "--norms", "instance", "--batch-sizes", "1", "--seeds", "1", "--set", f"output_dir={tmp_path / 'runs'}",
                  "--tracking-uri", f"sqlite:///{tmp_path / 'store.db'}")
    assert_refused(proc, "plain name")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store.db").exists()
