"""medseg.training.planning: a config's `auto` values resolved from a fingerprint, and a planned
network (per-level kernels) built, saved and loaded."""
import pytest
import torch

from medseg.config import AUTO, load_config
from medseg.errors import ConfigError
from medseg.training.planning import resolve_auto
from tests.conftest import ROOT


def _fingerprint(spacing=(0.7, 0.7, 5.0), shape=(128, 128, 24), n=20):
    return {"modality": ["MRI"], "labels": {"0": "bg", "1": "a"},
            "cases": {f"c{i}": {"spacing": list(spacing), "shape": list(shape)} for i in range(n)}}


def test_auto_network_patch_spacing_and_batch_come_from_the_plan():
    cfg = load_config(ROOT / "configs/demo.yaml", ["model.filters=auto", "model.strides=auto", "train.batch_size=auto",
                                                    "sampling.patch_size=null"])
    assert cfg.model.planned and cfg.model.kernel_size == AUTO
    resolved, plan = resolve_auto(cfg, _fingerprint(), torch.device("cpu"))
    m = resolved.model
    assert m.filters == plan.filters and m.filters[0] == 16  # a CPU plan
    assert [tuple(s) if isinstance(s, tuple) else s for s in m.strides] == plan.strides
    assert m.kernel_size[0] == (3, 3, 1)  # 5 mm slices: kernel 1 along z at full resolution
    assert resolved.sampling.patch_size == plan.patch_size and resolved.train.batch_size == plan.batch_size
    assert resolved.preprocess.target_spacing == plan.target_spacing
    assert not resolved.model.planned  # what the run records holds no `auto`: a resume does not plan again


def test_a_given_patch_is_planned_for_and_explicit_networks_are_left_alone():
    cfg = load_config(ROOT / "configs/hippocampus.yaml")  # filters/strides/kernel auto, patch 40 x 56 x 40
    resolved, plan = resolve_auto(cfg, _fingerprint((1, 1, 1), (36, 50, 35)), torch.device("cpu"))
    assert resolved.sampling.patch_size == (40, 56, 40) and resolved.model.filters == [16, 32, 64, 128]
    assert resolved.train.batch_size == 2  # given
    plain = load_config(ROOT / "configs/demo.yaml")
    assert resolve_auto(plain, _fingerprint(), torch.device("cpu")) == (plain, None)
    batch_only = load_config(ROOT / "configs/demo.yaml", ["train.batch_size=auto"])
    out, plan = resolve_auto(batch_only, _fingerprint((1, 1, 1), (36, 50, 35), n=200), torch.device("cpu"))
    assert out.model.filters == batch_only.model.filters and out.train.batch_size >= 2
    assert "for the config's network" in plan.reasons[-1]
    with pytest.raises(ConfigError, match="patch size"):  # a given patch must fit the planned downsampling
        resolve_auto(load_config(ROOT / "configs/demo.yaml", ["model.filters=auto", "model.strides=auto",
                                                               "sampling.patch_size=[50,50,50]"]),
                     _fingerprint((1, 1, 1), (50, 50, 50)), torch.device("cpu"))


def test_a_planned_network_with_per_level_kernels_builds_saves_and_loads(tmp_path):
    from medseg.models import NetworkSpec, build_unet
    from medseg.models.directory import load_model_dir, save_model_dir
    from medseg.plan import Plan
    cfg = load_config(ROOT / "configs/demo.yaml", ["model.filters=auto", "model.strides=auto",
                                                    "sampling.patch_size=null"])
    resolved, plan = resolve_auto(cfg, _fingerprint((0.7, 0.7, 5.0), (64, 64, 12)), torch.device("cpu"))
    spec = NetworkSpec.from_config(resolved.model, 1, 2)
    net = build_unet(spec).eval()
    x = torch.randn(1, 1, *plan.patch_size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 2, *plan.patch_size)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert (3, 3, 1) in {m.kernel_size for m in convs}
    p = Plan(modality=["MRI"], labels={0: "bg", 1: "a"}, target_spacing=plan.target_spacing, patch_size=plan.patch_size)
    loaded = load_model_dir(save_model_dir(tmp_path / "model", net, p, spec))
    with torch.no_grad():
        assert torch.equal(loaded.network(x), y)


def test_init_from_loads_what_matches_and_names_what_differs(tmp_path):
    """A source with 3 classes into a network with 4: the output heads start fresh, every other
    tensor is copied; the label difference is named in a warning."""
    from medseg.models import NetworkSpec, build_unet
    from medseg.models.directory import save_model_dir
    from medseg.plan import Plan
    from medseg.training.init_from import initialize_from
    small = dict(filters=[8, 16, 32], strides=[1, 2, 2])
    src_plan = Plan(modality=["MRI"], labels={0: "bg", 1: "a", 2: "b"}, target_spacing=(1.0, 1.0, 1.0),
                    patch_size=(16, 16, 16))
    source = build_unet(NetworkSpec(1, 3, **small), seed=1)
    folder = save_model_dir(tmp_path / "model", source, src_plan, NetworkSpec(1, 3, **small))
    target = build_unet(NetworkSpec(1, 4, **small), seed=2)
    new_plan = Plan(modality=["MRI"], labels={0: "bg", 1: "a", 2: "b", 3: "c"}, target_spacing=(1.0, 1.0, 1.0),
                    patch_size=(16, 16, 16))
    lines = []
    tags = initialize_from(target, str(folder), new_plan, log=lines.append)
    theirs, ours = source.state_dict(), target.state_dict()
    same = [k for k in ours if k in theirs and theirs[k].shape == ours[k].shape]
    assert all(torch.equal(ours[k], theirs[k]) for k in same)
    assert int(tags["init_loaded"]) == len(same) and int(tags["init_skipped"]) == len(ours) - len(same) > 0
    assert "labels" in tags["init_plan_differs"] and any(line.startswith("warning:") for line in lines)
    other = build_unet(NetworkSpec(1, 3, filters=[4, 8, 12], strides=[1, 2, 2]))
    with pytest.raises(Exception, match="no layer of this model matches"):
        initialize_from(other, str(folder), src_plan)
