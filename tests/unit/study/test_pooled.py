"""medseg.study.pooled: sweeps with one recipe reported as one study (a seed added later), from a
store written with known per-case Dice."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import stats

from medseg.errors import MedsegError
from medseg.study.pooled import build_pooled_report
from tests.conftest import fresh_store
from tests.unit.study.test_robustness import CASES, _dice, _write_sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Sweep "b" (seed 0: instance and batch norm at batch 1 and 4, group norm at batch 1), "c"
    (the same recipe, seed 1: instance and batch norm at batch 1), "a" (another learning rate, seed
    0) and "d" (the same recipe as "b", repeating its instance_bs1_seed0)."""
    uri = fresh_store(tmp_path_factory.mktemp("pooled") / "store.db")
    _write_sweep(uri, "b", [(n, b, 0) for n in ("instance", "batch") for b in (1, 4)] + [("group", 1, 0)])
    _write_sweep(uri, "c", [("instance", 1, 1), ("batch", 1, 1)])
    _write_sweep(uri, "a", [("instance", 1, 0), ("batch", 1, 0)])
    _write_sweep(uri, "d", [("instance", 1, 0)])
    return uri


def test_pooled_sweeps_give_one_report_with_every_seed(store, tmp_path):
    """Through ``medseg report --pool`` (one report build: the CLI prints the summary of the result)."""
    from typer.testing import CliRunner

    from medseg.cli import app
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["report", "-e", "robust-test", "--tracking-uri", store, "--sweep", "b",
                                      "--sweep", "c", "--pool", "--output", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "sweep b+c" in result.output and not (out / "robustness.md").exists()  # pooled, not compared
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 7 and {r["sweep"] for r in runs} == {"b", "c"}
    with open(out / "summary.csv") as f:
        cells = {(s["norm"], s["batch_size"]): s["seeds"] for s in csv.DictReader(f)}
    assert cells[("instance", "1")] == "2" and cells[("batch", "1")] == "2" and cells[("instance", "4")] == "1"
    # instance - batch at batch 1 over both seeds: per case, the mean over seeds 0 and 1 of the
    # difference the data were written with (0.02 + 0.002 i, the same in each seed)
    with open(out / "pairwise.csv") as f:
        (c,) = [r for r in csv.DictReader(f)
                if r["batch_size"] == "1" and {r["norm_a"], r["norm_b"]} == {"instance", "batch"}]
    diffs = np.array([np.mean([_dice("b", "instance", 1, s, i) - _dice("b", "batch", 1, s, i) for s in (0, 1)])
                      for i in range(len(CASES))])
    sign = 1 if c["norm_a"] == "instance" else -1
    assert c["seeds"] == "2" and sign * float(c["mean_difference"]) == pytest.approx(diffs.mean(), abs=1e-9)
    assert float(c["p_value"]) == pytest.approx(stats.wilcoxon(diffs).pvalue, rel=1e-9)
    text = (out / "summary.md").read_text()
    assert "`b` + `c`, pooled" in text and "7 children finished" in text


def test_pooling_refuses_other_recipes_a_repeated_child_and_a_single_sweep(store, tmp_path):
    with pytest.raises(MedsegError, match=r"recipes differ.*base\.train\.lr = 0\.003 / 0\.001"):
        build_pooled_report(store, "robust-test", ["b", "a"], tmp_path / "x")
    with pytest.raises(MedsegError, match="more than one sweep.*instance_bs1_seed0"):
        build_pooled_report(store, "robust-test", ["b", "d"], tmp_path / "y")
    with pytest.raises(MedsegError, match="two or more different sweeps"):
        build_pooled_report(store, "robust-test", ["b", "b"], tmp_path / "z")
    assert not any((tmp_path / n).exists() for n in "xyz")  # nothing written


def test_medseg_report_pool_refuses_one_sweep_in_one_line(store, tmp_path, capsys):
    from medseg.cli import run_cli
    code = run_cli(["report", "-e", "robust-test", "--tracking-uri", store, "--sweep", "b", "--pool", "--output",
                    str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--pool needs two or more --sweep" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_config_key_newer_than_a_sweep_differs_only_off_its_default():
    """A sweep run before a config key existed did not record it; a newer sweep that records the key's
    default ran the same recipe, and one that records another value did not."""
    from medseg.study.robustness import recipe_differences
    old = {"base.train.lr": "0.001"}
    assert recipe_differences({"a": old, "b": {**old, "base.model.plan_memory_gb": "None"}}) == {}
    assert recipe_differences({"a": old, "b": {**old, "base.model.plan_memory_gb": "4.0"}}) == {
        "base.model.plan_memory_gb": ["-", "4.0"]}
    assert recipe_differences({"a": old, "b": {"base.train.lr": "0.003"}}) == {"base.train.lr": ["0.001", "0.003"]}
