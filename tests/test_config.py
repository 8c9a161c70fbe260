import pytest

from medseg.config import Config, flatten, load_config
from medseg.errors import ConfigError
from tests.conftest import ROOT


def test_shipped_configs_validate():
    for name in ("hippocampus.yaml", "openkbp_ct.yaml", "demo.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert isinstance(cfg, Config)


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
