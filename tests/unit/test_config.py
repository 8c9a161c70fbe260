import pytest

from medseg.config import flatten, load_config
from medseg.errors import ConfigError
from tests.conftest import ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates_and_keeps_its_values(path):
    import yaml
    cfg = load_config(path)
    doc = yaml.safe_load(path.read_text())
    flat = flatten(cfg)
    for section, values in doc.items():  # every value in the file reaches the typed config unchanged
        if not isinstance(values, dict):
            assert flat[section] == str(values), section
            continue
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            got = list(got) if isinstance(got, tuple) else got
            want = type(got)(value) if isinstance(got, (int, float)) and not isinstance(got, bool) else value
            assert (str(got) == str(want)) if key in ("root", "cache_dir") else got == want, f"{section}.{key}"


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs/hippocampus.yaml",
                      ["train.lr=0.02", "model.norm=group", "sampling.patch_size=[32,48,32]", "train.amp=none"])
    assert cfg.train.lr == 0.02 and cfg.model.norm == "group"
    assert cfg.sampling.patch_size == (32, 48, 32)
    assert flatten(cfg)["train.lr"] == "0.02"


@pytest.mark.parametrize("override, needle", [
    ("train.learning_rate=0.1", "train.learning_rate: unknown key"),
    ("train.batch_size=two", "train.batch_size"),
    ("model.norm=weight", "model.norm"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.fold=7", "fold 7 is out of range"),
    ("nonsense", "key.subkey=value"),
])
def test_bad_values_are_clear_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/hippocampus.yaml", [override])
    assert needle in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_compile_without_a_compiler_is_a_config_error(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        load_config(ROOT / "configs/demo.yaml", ["train.compile=true"])
    assert load_config(ROOT / "configs/demo.yaml", ["train.compile=false"]).train.compile is False
