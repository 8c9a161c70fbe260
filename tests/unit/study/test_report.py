"""medseg.study.report: the plateau flag, and the report built from a store written with known
per-case Dice (converged flags, per-case Dice read back, paired statistics against scipy/statsmodels,
the tables logged to MLflow). The study's pairing (patch stream, initial weights) is tested in
tests/unit/training/test_patch_stream.py and tests/unit/models/test_unet.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from medseg.study.report import build_report, plateau, which_norm, which_norm_markdown
from medseg.study.statistics import Comparison
from medseg.tracking import Tracker
from medseg.keys import FINAL_DICE_MEAN
from medseg.training.validation import case_dice_key
from tests.conftest import fresh_store


def test_the_gain_over_the_last_third():
    from medseg.study.report import last_third_gain
    curve = [(i, v) for i, v in enumerate([0.5, 0.6, 0.7, 0.74, 0.75])]
    assert last_third_gain(curve) == pytest.approx(0.75 - 0.7)  # 5 points: the last minus the third
    twelve = [(i, 0.01 * i) for i in range(12)]
    assert last_third_gain(twelve) == pytest.approx(0.11 - 0.07)  # validation 12 minus 8
    assert math.isnan(last_third_gain(curve[:2]))


def test_the_plateau_rule():
    assert plateau([(100, 0.5), (200, 0.8), (300, 0.805)], 0.01) == (pytest.approx(0.005), True)
    assert plateau([(100, 0.5), (200, 0.7), (300, 0.75)], 0.01)[1] is False
    assert plateau([(100, 0.8), (200, 0.7)], 0.01)[1] is True  # a drop is not an improvement
    assert plateau([(100, 0.8)], 0.01)[1] is False


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
    uri = fresh_store(work / "store.db")
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
    # 3 validations: the last third is the last interval (+0.05 still improving, +0.005 otherwise)
    gains = {(r["norm"], r["seed"]): r["last_third_gain"] for r in rep["rows"]}
    assert gains[("batch", 1)] == pytest.approx(0.05) and gains[("instance", 0)] == pytest.approx(0.005)
    md = (rep["folder"] / "summary.md").read_text()
    assert md.splitlines()[2].startswith("**5 of 6 children met the plateau rule**")  # at the top
    # the stricter column: a gain over the last third above the threshold is flagged beside it
    assert {(r["norm"], r["seed"]) for r in rep["rows"] if r["still_rising"]} == {("batch", 1)}
    assert "**1 of 6 were still rising**" in md and "batch_bs2_seed1 +0.050" in md


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
    # seeds shift every norm alike, so each seed's mean difference is the same 0.038
    assert table[("instance", "group")].per_seed == pytest.approx((0.038, 0.038), abs=1e-12)
    assert table[("instance", "group")].seeds_agree
    assert not table[("instance", "group")].tie and table[("instance", "group")].ci_low > 0
    assert table[("instance", "batch")].tie  # +-0.01 alternating: mean 0, CI across 0
    choice = {r["batch_size"]: r for r in rep["which_norm"]}
    assert choice[2]["best"] in ("instance", "batch") and "group" in choice[2]["worse"]
    md = (rep["folder"] / "summary.md").read_text()
    c = table[("instance", "group")]
    # 2 seeds: no random-effect interval; the fixed-network one is shown and decides, marked as such
    assert f"| {c.mean_difference:+.3f} [these networks only] |" in md and f"| [{c.ci_low:+.3f}, {c.ci_high:+.3f}] |" in md
    assert not c.random_effect and c.verdict.endswith("(these networks only)")


def test_the_report_tables_are_logged_as_mlflow_tables(synthetic_store, tmp_path):
    from mlflow import MlflowClient
    uri, rep = synthetic_store
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(rep["parent_run_id"], "report")}
    assert {"report/summary_table.json", "report/pairwise_table.json", "report/which_norm_table.json",
            "report/summary.md", "report/learning_curves.png", "report/paired_differences.png"} <= logged
    # the tag MLflow's artifact view reads to render a JSON artifact as a table
    tables = json.loads(client.get_run(rep["parent_run_id"]).data.tags["mlflow.loggedArtifacts"])
    assert {(t["path"], t["type"]) for t in tables} >= {("report/pairwise_table.json", "table"),
                                                        ("report/summary_table.json", "table")}
    path = client.download_artifacts(rep["parent_run_id"], "report/pairwise_table.json", str(tmp_path))
    doc = json.loads(open(path).read())
    assert len(doc["data"]) == 3 and {"mean_difference", "ci_low", "ci_high", "p_holm"} <= set(doc["columns"])


def test_which_norm_stars_a_norm_whose_test_disagrees_with_its_interval():
    summary = [{"batch_size": 2, "norm": n, "case_dice_mean": d} for n, d in (("instance", 0.85), ("group", 0.84))]
    agree, disagree = (Comparison(2, "instance", "group", 2, 26, 0.007, 0.002, 0.012, p_value=p / 3, p_holm=p)
                       for p in (0.001, 0.097))
    assert which_norm(summary, [agree])[0]["worse"] == "group"
    rows = which_norm(summary, [disagree])
    assert rows[0]["best"] == "instance" and rows[0]["worse"] == "group*"
    assert "disagrees with the interval" in which_norm_markdown(rows)


def test_an_interim_report_names_the_planned_children_not_finished():
    from medseg.study.report import _completeness, planned_children
    params = {"sweep.norms": "instance,batch", "sweep.batch_sizes": "1,4", "sweep.seeds": "0,1"}
    assert len(planned_children(params)) == 8 and planned_children({}) == []
    rows = [{"norm": n, "batch_size": b, "seed": 0} for n in ("instance", "batch") for b in (1, 4)]
    text = _completeness(planned_children(params), rows)
    assert text.startswith("4 of 8 planned children finished. **Interim report**")
    assert "instance_bs1_seed1" in text and "instance_bs1_seed0" not in text
    everything = rows + [{**r, "seed": 1} for r in rows]
    assert _completeness(planned_children(params), everything) == "8 of 8 planned children finished."


def test_medseg_report_takes_the_negligible_difference_from_the_command_line(synthetic_store, tmp_path):
    from typer.testing import CliRunner

    from medseg.cli import app
    uri, _ = synthetic_store
    # instance - batch alternates +-0.01 by case: its CI contains 0 and lies within +-0.05, not +-0.001
    for margin, verdict in (("0.05", "no practical difference (these networks only)"),
                            ("0.001", "cannot tell (these networks only)")):
        out = tmp_path / margin
        result = CliRunner().invoke(app, ["report", "--experiment", "study-test", "--tracking-uri", uri, "--no-log",
                                          "--output", str(out), "--negligible", margin])
        assert result.exit_code == 0, result.output
        assert "which norm at which batch size" in result.output  # the answer, printed
        lines = (out / "summary.md").read_text().splitlines()
        row = [line for line in lines if line.startswith("| 2 | instance | batch | 2 |")]
        assert row and row[0].rstrip(" |").endswith(verdict)


def test_which_norm_stars_a_worse_norm_whose_seeds_disagree():
    summary = [{"batch_size": 2, "norm": n, "case_dice_mean": d} for n, d in (("instance", 0.85), ("group", 0.84))]
    c = Comparison(2, "instance", "group", 2, 26, 0.007, 0.002, 0.012, p_value=0.0003, p_holm=0.001,
                   per_seed=(0.015, -0.001))
    assert which_norm(summary, [c])[0]["worse"] == "group*"


def test_which_norm_never_calls_worse_a_norm_that_beats_the_best_on_the_shared_seeds():
    """A partial store: instance has seeds 0 and 1 (mean 0.80), group only seed 0, where it beats
    instance; the cell means make instance the highest, the pairing says group is better."""
    from medseg.study.statistics import pairwise_table
    cases = [f"c{i}" for i in range(10)]
    dice = {("instance", 2): {0: {c: 0.70 + 0.001 * i for i, c in enumerate(cases)},
                              1: {c: 0.90 + 0.001 * i for i, c in enumerate(cases)}},
            ("group", 2): {0: {c: 0.75 + 0.002 * i for i, c in enumerate(cases)}}}
    table = pairwise_table(dice, ["instance", "group"])
    assert table[0].verdict == "group better (these networks only)"
    summary = [{"batch_size": 2, "norm": "instance", "case_dice_mean": 0.8045},
               {"batch_size": 2, "norm": "group", "case_dice_mean": 0.759}]
    row = which_norm(summary, table)[0]
    assert row["best"] == "instance" and row["worse"] == "-" and row["tied_with_best"] == "group*"


def test_the_per_label_table_reads_each_labels_dice_from_the_store(synthetic_store):
    _, rep = synthetic_store
    rows = {(c.label, c.norm_b): c for c in rep["per_label"]}
    assert set(rows) == {(lab, n) for lab in LABELS for n in ("group", "batch")}
    for lab in LABELS:
        c = rows[(lab, "group")]
        d = np.array([np.mean([_dice("instance", s, i, lab) - _dice("group", s, i, lab) for s in (0, 1)])
                      for i in range(len(CASES))])
        assert (c.norm_a, c.batch_size, c.cases) == ("instance", 2, len(CASES))
        assert c.mean_difference == pytest.approx(d.mean(), abs=1e-12)
        assert c.p_value == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert multipletests([c.p_value for c in rep["per_label"]], method="holm")[1] == pytest.approx(
        [c.p_holm for c in rep["per_label"]], rel=1e-12)
    csv_rows = (rep["folder"] / "per_label.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4 and "label" in csv_rows[0].split(",")
    assert "label" not in (rep["folder"] / "pairwise.csv").read_text().splitlines()[0].split(",")
    assert "## Per label (secondary)" in (rep["folder"] / "summary.md").read_text()


def test_a_child_that_did_not_learn_a_label_is_flagged(synthetic_store):
    from medseg.study.report import label_means, unlearned_labels
    cases = {(c, lab): (0.02 if lab == "A" and c != "c0" else 0.8) for c in ("c0", "c1", "c2") for lab in ("A", "B")}
    assert unlearned_labels(label_means(cases)) == []  # A: mean (0.8 + 0.02 + 0.02) / 3 = 0.28
    assert unlearned_labels(label_means(cases), below=0.3) == ["A"]
    assert unlearned_labels(label_means({(c, lab): 0.0 for c in ("c0", "c1") for lab in ("B", "A")})) == ["A", "B"]
    _, rep = synthetic_store
    assert all(r["unlearned_labels"] == "" for r in rep["rows"])
    assert "did not learn a label" not in (rep["folder"] / "summary.md").read_text()


def test_a_report_path_never_comes_from_a_sweep_id_in_the_store(synthetic_store, tmp_path, capsys, monkeypatch):
    """A sweep id tag that is not a plain name (anyone who can write to a shared store can set one)
    is refused when it would name the default report folder; nothing is written."""
    import shutil

    from mlflow import MlflowClient

    from medseg.cli import run_cli
    from medseg.keys import SWEEP_ID_TAG
    shared, rep = synthetic_store
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(shared.removeprefix("sqlite:///"), store / "store.db")  # a copy: the module's store stays as it is
    uri = f"sqlite:///{store / 'store.db'}"
    MlflowClient(tracking_uri=uri).set_tag(rep["parent_run_id"], SWEEP_ID_TAG, "../../../elsewhere")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = run_cli(["report", "-e", "study-test", "--tracking-uri", uri, "--no-log"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "the store's sweep id" in err and "--output" in err and "Traceback" not in err
    assert not list(work.iterdir()) and not (tmp_path.parent / "elsewhere").exists()
