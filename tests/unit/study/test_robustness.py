"""medseg.study.robustness: whether a ranking of norms holds across sweeps, from a store written with
known per-case Dice (two sweeps sharing some cells and one seed)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from medseg.errors import MedsegError
from medseg.keys import FINAL_DICE_MEAN
from medseg.study.robustness import (CHANGES, HOLDS, HOLDS_NO_DIFFERENCE, HOLDS_STRICT, REVERSES,
                                     build_robustness_report, ranking_holds)
from medseg.study.statistics import Comparison
from medseg.tracking import Tracker
from medseg.training.validation import case_dice_key
from tests.conftest import fresh_store

CASES = [f"case_{i:02d}" for i in range(10)]


def _dice(sweep: str, norm: str, bs: int, seed: int, i: int) -> float:
    """Batch norm loses 0.02 + 0.002 i at batch 1 in both sweeps; at batch 4 it wins by 0.01 in
    sweep "b" and loses by 0.005 + 0.001 i in sweep "a" (the ranking changes)."""
    base = 0.80 + 0.01 * i + 0.01 * seed + (0.02 if sweep == "b" else 0.0)
    if norm != "batch":
        return base
    if bs == 1:
        return base - 0.02 - 0.002 * i
    return base + 0.01 if sweep == "b" else base - 0.005 - 0.001 * i


def _write_sweep(uri: str, sweep: str, cells: list[tuple[str, int, int]]) -> None:
    parent = Tracker(uri, "robust-test", f"sweep_{sweep}", {"medseg.sweep_id": sweep, "medseg.role": "parent"})
    parent.log_params({"base.train.lr": 0.001 if sweep == "a" else 0.003, "base.data.fold": 0,
                       "sweep.seeds": ",".join(sorted({str(s) for *_, s in cells}))})
    for norm, bs, seed in cells:
        child = Tracker(uri, "robust-test", f"{norm}_bs{bs}_seed{seed}", {
            "medseg.sweep_id": sweep, "medseg.role": "child", "norm": norm, "mlflow.parentRunId": parent.run_id})
        child.log_params({"model.norm": norm, "train.batch_size": bs, "train.iterations_per_epoch": 10,
                          "train.epochs": 2, "seed": seed, "train.lr": (0.001 if sweep == "a" else 0.003) * (bs / 2) ** 0.5})
        cases = {case_dice_key(c, "L"): _dice(sweep, norm, bs, seed, i) for i, c in enumerate(CASES)}
        final = float(np.mean(list(cases.values())))
        for step, v in enumerate([final - 0.2, final]):
            child.log_metrics({"val_dice_mean": v}, step=step)
        child.log_metrics({**cases, FINAL_DICE_MEAN: final}, step=1)
        child.end()
    parent.end()


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """Sweeps "a" and "b": instance and batch norm at batch 1 and 4, seed 0; "a" also has instance
    norm at batch 1 with seed 1, "b" group norm at batch 1 (neither shared); sweep "c": instance
    norm at batch 1, seed 1 only."""
    uri = fresh_store(tmp_path_factory.mktemp("robust") / "store.db")
    shared = [(n, b, 0) for n in ("instance", "batch") for b in (1, 4)]
    _write_sweep(uri, "a", shared + [("instance", 1, 1)])
    _write_sweep(uri, "b", shared + [("group", 1, 0)])
    _write_sweep(uri, "c", [("instance", 1, 1)])
    return uri


def test_the_rankings_are_compared_on_the_shared_cells_and_seed_with_one_holm_family(two_sweeps, tmp_path):
    rep = build_robustness_report(two_sweeps, "robust-test", ["a", "b"], tmp_path)
    assert rep["seeds"] == [0]  # seed 1 is only in "a"
    keys = [(s, c.batch_size, c.norm_a, c.norm_b) for s, c in rep["comparisons"]]
    assert keys == [("a", 1, "instance", "batch"), ("a", 4, "instance", "batch"),
                    ("b", 1, "instance", "batch"), ("b", 4, "instance", "batch")]  # group: not in "a"
    for s, c in rep["comparisons"]:
        d = np.array([_dice(s, "instance", c.batch_size, 0, i) - _dice(s, "batch", c.batch_size, 0, i)
                      for i in range(len(CASES))])
        assert c.mean_difference == pytest.approx(d.mean(), abs=1e-12) and c.seeds == 1
        if np.ptp(d) > 0:
            assert c.p_value == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    ps = [c.p_value for _, c in rep["comparisons"]]
    assert [c.p_holm for _, c in rep["comparisons"]] == pytest.approx(multipletests(ps, method="holm")[1], rel=1e-12)
    holds = {h["batch_size"]: (h["ranking"], h["ahead"]) for h in rep["holds"]}
    # batch 4: "a" has batch norm behind (CI above 0), "b" ahead by 0.01 on every case (CI = the mean)
    assert holds == {1: (HOLDS_STRICT, "instance"), 4: (REVERSES, "-")}
    notes = rep["notes"]
    assert notes["differ"] == {"base.train.lr": ["0.001", "0.003"]} and not notes["validation_differs"]
    assert notes["left_out"] == {"a": "seed 1 (1 child)", "b": "1 cell: group at batch 1"}
    md = (tmp_path / "robustness.md").read_text()
    assert "| 4 | instance | batch |" in md and REVERSES in md and "`base.train.lr` (0.001, 0.003)" in md
    assert len((tmp_path / "robustness_holds.csv").read_text().splitlines()) == 1 + 2
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = {(c["sweep"], c["norm"], c["batch_size"]): c for c in rep["cells"]}
    assert cells[("b", "batch", 1)]["lr"] == pytest.approx(0.003 / 2 ** 0.5) and cells[("a", "instance", 4)]["seeds"] == 1
    assert len((tmp_path / "robustness.csv").read_text().splitlines()) == 1 + 4


def test_a_robustness_report_needs_two_sweeps_that_share_a_seed(two_sweeps, tmp_path):
    for ids in (["a", "a"], ["a"], ["a", "b", "a"]):
        with pytest.raises(MedsegError, match="two or more different sweeps"):
            build_robustness_report(two_sweeps, "robust-test", ids, tmp_path)
    with pytest.raises(MedsegError, match="no sweep zz"):
        build_robustness_report(two_sweeps, "robust-test", ["a", "zz"], tmp_path)
    with pytest.raises(MedsegError, match="share no seed"):
        build_robustness_report(two_sweeps, "robust-test", ["b", "c"], tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written on an error


def test_medseg_report_with_several_sweeps_prints_whether_each_ranking_holds(two_sweeps, tmp_path, capsys):
    from typer.testing import CliRunner

    from medseg.cli import app
    result = CliRunner().invoke(app, ["report", "-e", "robust-test", "--tracking-uri", two_sweeps, "--sweep", "a",
                                      "--sweep", "b", "--output", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "batch 4, instance - batch: " + REVERSES in result.output
    assert "batch 1, instance - batch: " + HOLDS_STRICT + " (instance ahead; +" in result.output
    assert (tmp_path / "robustness.md").is_file()
    from medseg.cli import run_cli  # the error boundary: one line, exit code 2
    for args, message in ((["--sweep", "a", "--sweep", "a"], "two or more different sweeps"),
                          (["--sweep", ""], "a sweep id is a plain name"), (["--sweep", "a'b"], "plain name"),
                          (["--sweep", "../../x"], "plain name")):
        code = run_cli(["report", "-e", "robust-test", "--tracking-uri", two_sweeps, "--no-log", "--output",
                        str(tmp_path / "x"), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def _c(mean: float, lo: float, hi: float) -> Comparison:
    return Comparison(1, "instance", "batch", 1, 10, mean, lo, hi, p_value=0.5)


def test_the_ranking_verdict_separates_a_kept_winner_a_kept_tie_a_sign_change_and_a_reversal():
    assert ranking_holds([_c(0.02, 0.01, 0.03), _c(0.01, 0.002, 0.02)]) == (HOLDS_STRICT, "instance")
    assert ranking_holds([_c(-0.02, -0.03, -0.01), _c(-0.001, -0.01, 0.01)]) == (HOLDS, "batch")
    assert ranking_holds([_c(0.001, -0.01, 0.01), _c(0.002, -0.01, 0.01)]) == (HOLDS_NO_DIFFERENCE, "instance")
    assert ranking_holds([_c(0.001, -0.01, 0.01), _c(-0.002, -0.01, 0.01)]) == (CHANGES, "-")
    assert ranking_holds([_c(0.0, 0.0, 0.0), _c(0.002, -0.01, 0.01)]) == (CHANGES, "-")  # 0 has no sign
    assert ranking_holds([_c(0.02, 0.01, 0.03), _c(-0.02, -0.03, -0.01)]) == (REVERSES, "-")
