"""Loading a model directory never runs code: a real malicious pickle is refused."""
import hashlib
import json
import pickle

import pytest

from medseg.errors import ModelError
from medseg.models import NetworkSpec, build_unet
from medseg.models.directory import load_model_dir, save_model_dir
from medseg.plan import Plan
from medseg.checkpoint import load_checkpoint


class Payload:
    """Unpickling this calls os.system, which creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model_dir(tmp_path):
    spec = NetworkSpec(1, 3, filters=[8, 16, 32], strides=[1, 2, 2])
    plan = Plan(modality=["MRI"], labels={0: "bg", 1: "a", 2: "b"}, target_spacing=(1.0, 1.0, 1.0),
                patch_size=(16, 16, 16))
    return save_model_dir(tmp_path / "model", build_unet(spec), plan, spec)


def _plant(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"weights": Payload(marker)}, f)


def test_clean_model_dir_loads(model_dir):
    loaded = load_model_dir(model_dir)
    assert not loaded.network.training
    assert json.loads((model_dir / "medseg_model.json").read_text())["checksums"]["weights.pt"]


def test_malicious_weights_are_refused_and_never_run(model_dir, tmp_path):
    marker = tmp_path / "pwned"
    _plant(model_dir / "weights.pt", marker)
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model_dir(model_dir)
    # even with a matching checksum (an attacker rewrote the metadata too), weights_only refuses it
    meta = json.loads((model_dir / "medseg_model.json").read_text())
    meta["checksums"]["weights.pt"] = hashlib.sha256((model_dir / "weights.pt").read_bytes()).hexdigest()
    (model_dir / "medseg_model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_model_dir(model_dir)
    assert not marker.exists()
    # a resume checkpoint is loaded the same way
    ckpt = tmp_path / "last.pt"
    _plant(ckpt, marker)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(ckpt)
    assert not marker.exists()
    # sanity: the payload is real (plain pickle would run it)
    with open(ckpt, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_damaged_weights_are_refused(model_dir):
    raw = bytearray((model_dir / "weights.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (model_dir / "weights.pt").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model_dir(model_dir)


def test_a_model_directory_is_readable_by_the_group_and_replaced_whole(tmp_path):
    import os
    import stat
    spec = NetworkSpec(1, 3, filters=[8, 16, 32], strides=[1, 2, 2])
    plan = Plan(modality=["MRI"], labels={0: "bg", 1: "a", 2: "b"}, target_spacing=(1.0, 1.0, 1.0),
                patch_size=(16, 16, 16))
    old = os.umask(0o027)  # group may read, others nothing
    try:
        first = save_model_dir(tmp_path / "model", build_unet(spec), plan, spec, extra={"n": 1})
        path = save_model_dir(tmp_path / "model", build_unet(spec), plan, spec, extra={"n": 2})
    finally:
        os.umask(old)
    assert path == first and json.loads((path / "medseg_model.json").read_text())["n"] == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    assert {stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()} == {0o640}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    load_model_dir(path)


def test_weights_that_would_inflate_are_refused_before_loading(model_dir):
    """A small deflated archive that unpacks to far more than the network's tensors (here 200 MB of
    zeros in 0.2 MB), with a checksum that matches, is refused unread."""
    import zipfile
    weights = model_dir / "weights.pt"
    with zipfile.ZipFile(weights, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (200 << 20))
    assert weights.stat().st_size < 1 << 20
    meta = json.loads((model_dir / "medseg_model.json").read_text())
    meta["checksums"]["weights.pt"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (model_dir / "medseg_model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"would unpack to 200.0 MB.*refused before loading"):
        load_model_dir(model_dir)
