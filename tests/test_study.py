"""The normalizer study's design and statistics: pairing (patch stream, initial weights), the
plateau flag, paired statistics against scipy/statsmodels on known differences, the batch-dependence
metric, and the per-child environment of ``--jobs``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from statsmodels.stats.multitest import multipletests

from medseg import transforms as mt
from medseg.data import compute_fingerprint, read_dataset
from medseg.models import NORMS, NetworkSpec, build_unet
from medseg.models.norms import batch_dependence
from medseg.plan import make_plan
from medseg.study.report import build_report, plateau
from medseg.study.statistics import compare
from medseg.study.sweep import child_environment
from medseg.tracking import Tracker
from medseg.training import distributed as dist
from medseg.training.patch_stream import EpochPatchStream
from medseg.keys import FINAL_DICE_MEAN
from medseg.training.validation import case_dice_key
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def volumes():
    spec = read_dataset(SAMPLE)
    plan = make_plan(compute_fingerprint(spec), patch_size=(24, 40, 24), strides=[1, 2, 2, 2])
    from monai.transforms import EnsureTyped
    pre, prep = mt.preprocessing(plan), mt.patch_preparation(plan)
    return plan, [EnsureTyped(keys=("image", "label"), track_meta=False)(prep(pre(c.as_dict())))
                  for c in spec.cases[:4]]


def _indices(batch_size: int, iterations_per_epoch: int, epochs: int) -> list[int]:
    """The stream indices a run consumes, in order (one process), as run.py asks for them."""
    per_epoch = iterations_per_epoch * batch_size
    return [i for e in range(epochs) for i in dist.rank_indices(e, per_epoch, 0, batch_size, dist.DistInfo())]


def test_children_of_one_seed_see_the_same_patches_whatever_the_batch_size(volumes):
    """Batch 1 in 3 epochs of 4 iterations and batch 3 in 2 epochs of 2 iterations: the i-th patch
    is the same (case, crop centre, augmentation draws) for every i of the shorter run."""
    plan, vols = volumes
    chain = lambda: mt.patch_sampling_and_augmentation(plan, probability=1.0)  # noqa: E731 every transform fires
    runs = {}
    for bs, ipe, epochs in ((1, 4, 3), (3, 2, 2)):
        stream = EpochPatchStream(vols, chain(), patches_per_epoch=ipe * bs, seed=7)
        idx = _indices(bs, ipe, epochs)
        assert idx == list(range(len(idx)))  # the run consumes the stream in order, without gaps
        runs[bs] = [stream[i][0] for i in idx]
    assert len(runs[1]) == 12 and len(runs[3]) == 12
    for a, b in zip(runs[1], runs[3]):
        assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
        assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))
    other_seed = EpochPatchStream(vols, chain(), patches_per_epoch=4, seed=8)
    assert not torch.equal(torch.as_tensor(other_seed[0][0]["image"]), torch.as_tensor(runs[1][0]["image"]))


def test_every_norm_starts_from_the_same_convolution_weights():
    convs = {}
    for norm in NORMS:
        net = build_unet(NetworkSpec(1, 3, [8, 16, 32, 64], [1, 2, 2, 2], norm=norm, num_groups=4), seed=3)
        convs[norm] = {k: v for k, v in net.state_dict().items() if v.dim() == 5}  # conv kernels
    ref = convs["instance"]
    assert len(ref) > 10
    for norm, weights in convs.items():
        assert weights.keys() == ref.keys(), norm
        assert all(torch.equal(weights[k], ref[k]) for k in ref), norm
    other = build_unet(NetworkSpec(1, 3, [8, 16, 32, 64], [1, 2, 2, 2]), seed=4).state_dict()
    assert not torch.equal(other[next(iter(ref))], ref[next(iter(ref))])


def test_batch_dependence_is_float_noise_for_instance_norm_and_large_for_batch_norm_in_train_mode():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 16, 16, 16, generator=gen) * torch.arange(1, 6).view(5, 1, 1, 1, 1)
    dep = {}
    for norm in ("instance", "batch"):
        net = build_unet(NetworkSpec(1, 3, [8, 16, 32], [1, 2, 2], norm=norm, deep_supervision=True), seed=0)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        dep[norm] = batch_dependence(net, x)
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats untouched
    # float32 logits of O(1): batched and single convolutions differ by a few ulps per op (1.2e-7
    # relative), summed over ~10 layers: well under 1e-4
    assert dep["instance"]["train"] < 1e-4 and dep["instance"]["eval"] < 1e-4
    assert dep["batch"]["eval"] < 1e-4  # running averages: independent of the batch
    assert dep["batch"]["train"] > 1e-2  # the other four examples set the statistics
    with pytest.raises(ValueError):
        batch_dependence(net, x[:1])


def test_the_plateau_rule():
    assert plateau([(100, 0.5), (200, 0.8), (300, 0.805)], 0.01) == (pytest.approx(0.005), True)
    assert plateau([(100, 0.5), (200, 0.7), (300, 0.75)], 0.01)[1] is False
    assert plateau([(100, 0.8), (200, 0.7)], 0.01)[1] is True  # a drop is not an improvement
    assert plateau([(100, 0.8)], 0.01)[1] is False


def test_child_environment_splits_threads_or_gpus():
    import os
    assert child_environment(0, 1, cpus=2, gpus=0) == dict(os.environ)  # one job: nothing changes
    env = child_environment(1, 2, cpus=2, gpus=0)
    assert env["OMP_NUM_THREADS"] == "1" and env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert child_environment(1, 2, cpus=16, gpus=2)["CUDA_VISIBLE_DEVICES"] == "1"
    assert child_environment(2, 3, cpus=16, gpus=2)["CUDA_VISIBLE_DEVICES"] == "0"
    assert child_environment(0, 4, cpus=2, gpus=0)["OMP_NUM_THREADS"] == "1"


# --- the report's statistics, on a store written with known per-case Dice -------------------------

CASES = [f"case_{i:02d}" for i in range(10)]
LABELS = ("Anterior", "Posterior")


def _dice(norm: str, seed: int, case: int, label: str) -> float:
    """Known per-case Dice: group is instance - 0.02 - 0.004 * case (a clear loss), batch is
    instance +- 0.01 alternating by case (no effect), seeds shift every norm by 0.01."""
    base = 0.80 + 0.01 * case + 0.01 * seed + (0.005 if label == "Posterior" else 0.0)
    return base + {"instance": 0.0, "group": -0.02 - 0.004 * case, "batch": 0.01 * (-1) ** case}[norm]


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    """A sweep's parent and 6 children (3 norms x 2 seeds at batch 2) as a sweep writes them; the
    batch-norm child of seed 1 still improving at its last validation."""
    work = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{work / 'store.db'}"
    parent = Tracker(uri, "study-test", "sweep_t", {"medseg.sweep_id": "t", "medseg.role": "parent"})
    parent.log_params({"sweep.rule": "test"})
    for norm in ("instance", "group", "batch"):
        for seed in (0, 1):
            child = Tracker(uri, "study-test", f"{norm}_bs2_seed{seed}", {
                "medseg.sweep_id": "t", "medseg.role": "child", "norm": norm, "mlflow.parentRunId": parent.run_id})
            child.log_params({"model.norm": norm, "train.batch_size": 2, "train.iterations_per_epoch": 10,
                              "train.epochs": 3, "seed": seed, "train.lr": 0.001})
            cases = {case_dice_key(c, lab): _dice(norm, seed, i, lab) for i, c in enumerate(CASES) for lab in LABELS}
            final = float(np.mean(list(cases.values())))
            still_improving = norm == "batch" and seed == 1
            curve = [final - 0.3, final - 0.05, final] if still_improving else [final - 0.3, final - 0.005, final]
            for step, v in enumerate(curve):
                child.log_metrics({"val_dice_mean": v, "train_loss": 1.0 - v, "seconds_per_iteration": 0.1,
                                   "patches_per_second": 20, "peak_memory_mb": 500}, step=step)
            child.log_metrics({**cases, FINAL_DICE_MEAN: final, "best_val_dice_mean": final}, step=2)
            child.end()
    parent.end()
    return uri, build_report(uri, "study-test", work / "report", log_to_parent=True)


def _case_differences(a: str, b: str) -> np.ndarray:
    return np.array([np.mean([np.mean([_dice(a, s, i, lab) - _dice(b, s, i, lab) for lab in LABELS])
                              for s in (0, 1)]) for i in range(len(CASES))])


def test_the_report_flags_a_child_still_improving(synthetic_store):
    _, rep = synthetic_store
    flagged = {(r["norm"], r["seed"]) for r in rep["rows"] if not r["converged"]}
    assert flagged == {("batch", 1)} and rep["converged"] == 5
    md = (rep["folder"] / "summary.md").read_text()
    assert md.splitlines()[2].startswith("**Warning: 1 of 6 children did not converge**")  # at the top


def test_the_per_case_dice_is_read_back_from_the_store(synthetic_store):
    _, rep = synthetic_store
    for r in rep["rows"]:
        assert len(r["cases"]) == len(CASES) * len(LABELS)
        assert r["cases"][("case_03", "Posterior")] == pytest.approx(_dice(r["norm"], r["seed"], 3, "Posterior"))
    cases_csv = (rep["folder"] / "cases.csv").read_text().splitlines()
    assert len(cases_csv) == 1 + 6 * len(CASES) * len(LABELS)


def test_the_paired_statistics_are_scipys_on_the_known_differences(synthetic_store):
    _, rep = synthetic_store
    table = {(c.norm_a, c.norm_b): c for c in rep["pairwise"]}
    assert set(table) == {("instance", "group"), ("instance", "batch"), ("group", "batch")}
    ps = []
    for (a, b), c in table.items():
        d = _case_differences(a, b)
        ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=10_000, method="BCa",
                             random_state=0).confidence_interval
        p = stats.wilcoxon(d).pvalue
        assert c.seeds == 2 and c.cases == len(CASES)
        assert c.mean_difference == pytest.approx(d.mean(), abs=1e-12)
        assert (c.ci_low, c.ci_high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
        assert c.p_value == pytest.approx(p, rel=1e-12)
        ps.append((c, p))
    holm = multipletests([p for _, p in ps], method="holm")[1]
    for (c, _), h in zip(ps, holm):
        assert c.p_holm == pytest.approx(h, rel=1e-12)
    # hand-checkable: instance - group = 0.02 + 0.004 * case, mean 0.038, all positive
    assert table[("instance", "group")].mean_difference == pytest.approx(0.038, abs=1e-12)
    assert not table[("instance", "group")].tie and table[("instance", "group")].ci_low > 0
    assert table[("instance", "batch")].tie  # +-0.01 alternating: mean 0, CI across 0
    choice = {r["batch_size"]: r for r in rep["which_norm"]}
    assert choice[2]["best"] in ("instance", "batch") and "group" in choice[2]["worse"]
    md = (rep["folder"] / "summary.md").read_text()
    c = table[("instance", "group")]
    assert f"{c.mean_difference:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]" in md


def test_compare_on_degenerate_input():
    assert compare(np.zeros(5))[1:] == (0.0, 0.0, 1.0)
    assert all(math.isnan(v) for v in compare(np.array([])))


def test_the_report_tables_are_logged_as_mlflow_tables(synthetic_store, tmp_path):
    from mlflow import MlflowClient
    uri, rep = synthetic_store
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(rep["parent_run_id"], "report")}
    assert {"report/summary_table.json", "report/pairwise_table.json", "report/which_norm_table.json",
            "report/summary.md", "report/learning_curves.png"} <= logged
    # the tag MLflow's artifact view reads to render a JSON artifact as a table
    tables = json.loads(client.get_run(rep["parent_run_id"]).data.tags["mlflow.loggedArtifacts"])
    assert {(t["path"], t["type"]) for t in tables} >= {("report/pairwise_table.json", "table"),
                                                        ("report/summary_table.json", "table")}
    path = client.download_artifacts(rep["parent_run_id"], "report/pairwise_table.json", str(tmp_path))
    doc = json.loads(open(path).read())
    assert len(doc["data"]) == 3 and {"mean_difference", "ci_low", "ci_high", "p_holm"} <= set(doc["columns"])
