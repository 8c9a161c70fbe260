"""The trained model as an MLflow Model: pyfunc loading, the Model Registry and `mlflow models serve`
give exactly the labels `medseg predict` writes (the `trained` fixture registers its model)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import MedsegError
from medseg.inference.pyfunc import AFFINE, IMAGE, LOGGED_MODEL_NAME, volume_input
from medseg.tracking import fluent_store
from tests.conftest import REGISTERED, SAMPLE

CASE = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))[0]


def _uri(trained) -> str:
    return f"sqlite:///{trained['work'] / 'store.db'}"


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """What `medseg predict` writes for CASE with the run's model directory."""
    out = tmp_path_factory.mktemp("predict")
    result = CliRunner().invoke(app, ["predict", "-m", str(trained["run_dir"] / "model"), "-i", str(CASE),
                                      "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (seg,) = out.glob("*_seg.nii.gz")
    labels = np.asarray(nib.load(seg).dataobj)
    assert labels.shape == nib.load(CASE).shape and len(np.unique(labels)) > 1  # a real segmentation to compare
    return labels


def test_pyfunc_model_gives_the_labels_of_medseg_predict(trained, reference):
    with fluent_store(_uri(trained)):
        model = mlflow.pyfunc.load_model(f"runs:/{trained['run'].info.run_id}/{LOGGED_MODEL_NAME}")
    sig = model.metadata.get_input_schema().input_dict()
    assert set(sig) == {IMAGE, AFFINE}
    labels = model.predict(volume_input(CASE))
    assert labels.dtype == np.uint8 and np.array_equal(labels, reference)
    img = nib.load(CASE)  # an array and its affine give the same
    assert np.array_equal(model.predict(volume_input(np.asarray(img.dataobj), img.affine)), reference)


def test_register_sets_the_alias_and_predict_reads_models_uri(trained, reference, tmp_path):
    version = mlflow.MlflowClient(_uri(trained), _uri(trained)).get_model_version_by_alias(REGISTERED, "champion")
    assert version.run_id == trained["run"].info.run_id
    for uri in (f"models:/{REGISTERED}@champion", f"models:/{REGISTERED}/{version.version}",
                f"runs:/{trained['run'].info.run_id}/{LOGGED_MODEL_NAME}"):
        out = tmp_path / uri.replace("/", "_").replace(":", "").replace("@", "_")
        result = CliRunner().invoke(app, ["predict", "-m", uri, "--tracking-uri", _uri(trained), "-i", str(CASE),
                                          "-o", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        (seg,) = out.glob("*_seg.nii.gz")
        assert np.array_equal(np.asarray(nib.load(seg).dataobj), reference), uri
    result = CliRunner().invoke(app, ["predict", "-m", f"models:/{REGISTERED}@nosuchalias", "--tracking-uri",
                                      _uri(trained), "-i", str(CASE), "-o", str(tmp_path / "x")])
    assert isinstance(result.exception, MedsegError) and "no such model" in str(result.exception)  # exit 2 in the CLI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_same_labels(trained, reference):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": _uri(trained),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # it execs uvicorn
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{REGISTERED}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        t0 = time.time()
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() - t0 < 240, "mlflow models serve did not answer /ping in 240 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        x = volume_input(CASE)
        body = json.dumps({"inputs": {IMAGE: x[IMAGE].tolist(), AFFINE: x[AFFINE].tolist()}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            labels = np.asarray(json.loads(response.read())["predictions"])
        assert np.array_equal(labels, reference)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
