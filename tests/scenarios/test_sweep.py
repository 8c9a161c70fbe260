"""The normalizer x batch-size sweep: parent/child MLflow runs, budget rules, restarts, the report."""
from __future__ import annotations

import csv
import math
import shutil

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from medseg.cli import app
from medseg.config import load_config
from medseg.study.report import build_report
from medseg.study.sweep import SweepSpec, child_iterations
from tests.conftest import ROOT, SAMPLE, fresh_store

EXPERIMENT = "sweep-test"


def _sweep_args(work, uri):
    return ["sweep", "--config", str(ROOT / "configs/demo.yaml"), "--data", str(SAMPLE), "--norms", "instance,batch",
            "--batch-sizes", "1,2", "--seeds", "1", "--budget-samples", "6", "--evaluations", "2",
            "--experiment", EXPERIMENT, "--tracking-uri", uri, "--sweep-id", "s1",
            "--set", f"output_dir={work / 'runs'}", "--set", f"data.cache_dir={work / 'cache'}",
            "--set", "validation.hd95=false", "--set", "train.amp=none", "--set", "tracking.log_model=false", "--jobs", "2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    uri = fresh_store(work / "store.db")
    result = CliRunner().invoke(app, _sweep_args(work, uri))
    assert result.exit_code == 0, result.output + repr(result.exception)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return {"work": work, "uri": uri, "client": client, "exp": exp.experiment_id, "output": result.output}


def _runs(sweep, role):
    return sweep["client"].search_runs([sweep["exp"]], f"tags.`medseg.role` = '{role}'")


def test_one_parent_and_a_child_per_cell_with_tags_params_metrics(sweep):
    (parent,) = _runs(sweep, "parent")
    children = _runs(sweep, "child")
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.budget"] == "samples"
    assert "ceil(samples / batch size)" in parent.data.params["sweep.rule"]
    cells = {(c.data.tags["norm"], c.data.tags["batch_size"], c.data.tags["seed"]) for c in children}
    assert cells == {("instance", "1", "0"), ("instance", "2", "0"), ("batch", "1", "0"), ("batch", "2", "0")}
    for c in children:
        t, p, m = c.data.tags, c.data.params, c.data.metrics
        assert c.info.status == "FINISHED"
        assert t["mlflow.parentRunId"] == parent.info.run_id and t["medseg.sweep_id"] == "s1"
        bs = int(p["train.batch_size"])
        assert p["model.norm"] == t["norm"]
        # same samples for every run (6 patches): 6 iterations at batch 1, 3 at batch 2 (2 epochs, rounded up)
        assert int(p["train.epochs"]) * int(p["train.iterations_per_epoch"]) == {1: 6, 2: 4}[bs]
        base = load_config(ROOT / "configs/demo.yaml").train  # the sweep's base config
        assert math.isclose(float(p["train.lr"]), base.lr * math.sqrt(bs / base.batch_size))
        for key in ("best_val_dice_mean", "seconds_per_iteration", "patches_per_second", "peak_memory_mb",
                    "train_loss", "best_val_dice_Anterior", "best_val_dice_Posterior"):
            assert key in m and math.isfinite(m[key]), key
        assert 0 <= m["best_val_dice_mean"] <= 1 and m["peak_memory_mb"] > 100
        assert ("best_bn_batch_stats_gap" in m) == (t["norm"] == "batch")
        hist = sweep["client"].get_metric_history(c.info.run_id, "val_dice_mean")
        assert sorted(h.step for h in hist) == [0, 1]
        # the final model's per-case Dice: every validation case and label, averaging to its mean
        cases = {k: v for k, v in m.items() if k.startswith("final_case_dice/")}
        assert len(cases) == 2 * len({k.split("/")[1] for k in cases}) >= 4
        assert math.isclose(sum(cases.values()) / len(cases), m["final_val_dice_mean"], rel_tol=1e-9)
        assert math.isclose(m["final_val_dice_mean"], max(hist, key=lambda h: h.step).value)  # the last epoch's
        # batch dependence of the trained network: float noise except batch norm in train mode
        assert m["final_batch_dependence_eval"] < 1e-4
        assert (m["final_batch_dependence_train"] > 1e-2) == (t["norm"] == "batch")


def test_children_of_one_seed_are_paired_end_to_end(sweep):
    """Batch norm at batch size 1 normalizes each example over (D, H, W) in training, exactly as
    instance norm: with the same patches and initial weights, their training losses agree to float
    noise (float32, a few ulps per op over 6 steps: well under rel 1e-4); other patches or weights
    would change the loss by percents."""
    by_key = {r.data.tags["medseg.sweep_key"]: r for r in _runs(sweep, "child")}
    loss = {k: [m.value for m in sorted(sweep["client"].get_metric_history(r.info.run_id, "train_loss"),
                                          key=lambda m: m.step)] for k, r in by_key.items()}
    assert loss["batch_bs1_seed0"] == pytest.approx(loss["instance_bs1_seed0"], rel=1e-4)
    assert abs(loss["instance_bs1_seed0"][0] - loss["instance_bs1_seed0"][1]) > 1e-2 * loss["instance_bs1_seed0"][0]


def test_jobs_2_runs_two_children_at_once_under_one_parent(sweep):
    (parent,) = _runs(sweep, "parent")
    children = sorted(_runs(sweep, "child"), key=lambda r: r.info.start_time)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    overlapping = [(a, b) for i, a in enumerate(children) for b in children[i + 1:]
                   if b.info.start_time < a.info.end_time]
    assert overlapping, "no two children ran at the same time"


def test_the_report_is_built_from_the_store_alone(sweep, tmp_path):
    runs = sweep["work"] / "runs" / "sweeps" / "s1" / "runs"
    runs.rename(runs.with_name("away"))  # no local run folder can be read
    try:
        rep = build_report(sweep["uri"], EXPERIMENT, tmp_path / "report", log_to_parent=False)
    finally:
        runs.with_name("away").rename(runs)
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"runs.csv", "summary.csv", "summary.md", "dice_vs_batch_size.png", "learning_curves.png",
            "speed_memory.png"} <= names
    rows = list(csv.DictReader((tmp_path / "report" / "summary.csv").open()))
    assert {(r["norm"], r["batch_size"]) for r in rows} == {("instance", "1"), ("instance", "2"), ("batch", "1"),
                                                           ("batch", "2")}
    client = sweep["client"]
    for s in rep["summary"]:  # the table's numbers are the store's numbers
        (run,) = [r for r in _runs(sweep, "child") if r.data.tags["norm"] == s["norm"]
                  and int(r.data.tags["batch_size"]) == s["batch_size"]]
        assert math.isclose(s["final_dice_mean_mean"], run.data.metrics["final_val_dice_mean"])
        assert math.isclose(s["best_dice_mean_mean"], run.data.metrics["best_val_dice_mean"])
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| batch | 2 | 1 | " in md and "BN batch-stats gap" in md and "## Pairwise comparisons" in md
    (parent,) = _runs(sweep, "parent")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/summary.md" in logged  # the sweep command logged its report to the parent run


def test_a_restart_skips_finished_runs_and_resumes_or_restarts_unfinished_ones(sweep):
    client, before = sweep["client"], {r.info.run_id for r in _runs(sweep, "child")}
    by_key = {r.data.tags["medseg.sweep_key"]: r for r in _runs(sweep, "child")}
    # interrupted after its last checkpoint (status left RUNNING, as after SIGKILL): to be resumed
    resumable = by_key["batch_bs2_seed0"]
    client.set_terminated(resumable.info.run_id, "RUNNING")
    # run folder gone: nothing to resume from, to be started afresh (the old run set aside)
    lost = by_key["instance_bs1_seed0"]
    client.set_terminated(lost.info.run_id, "KILLED")
    shutil.rmtree(lost.data.tags["medseg.run_dir"])
    result = CliRunner().invoke(app, _sweep_args(sweep["work"], sweep["uri"]))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.count("finished before, skipped") == 2
    after = _runs(sweep, "child")
    assert client.get_run(resumable.info.run_id).info.status == "FINISHED"
    assert client.get_run(lost.info.run_id).data.tags["medseg.superseded"] == "true"
    new = {r.info.run_id for r in after} - before
    assert len(new) == 1
    (fresh,) = [r for r in after if r.info.run_id in new]
    assert fresh.data.tags["medseg.sweep_key"] == "instance_bs1_seed0" and fresh.info.status == "FINISHED"
    assert len(_runs(sweep, "parent")) == 1


def test_a_minutes_budget_turns_measured_seconds_per_iteration_into_iterations():
    from medseg.config import load_config
    from medseg.study.sweep import Child, _measure_seconds_per_iteration

    cfg = load_config(ROOT / "configs/demo.yaml", [f"data.root={SAMPLE}", "model.filters=[8,16,32,64]",
                                                    "model.num_groups=4"])
    cache: dict = {}
    seconds = _measure_seconds_per_iteration(cfg, Child("group", 2, 0), 1, 3, cache)
    assert 0 < seconds < 60 and cache[("group", 2)] == seconds
    spec = SweepSpec(("group",), (2,), (0,), "minutes", 1.0)
    assert child_iterations(spec, 2, seconds) == int(60 / seconds)


def test_a_submitit_sweep_gives_the_same_parent_and_child_runs(tmp_path):
    """The SLURM path (a submitit job array) on submitit's local executor."""
    uri = fresh_store(tmp_path / "store.db")
    args = ["sweep", "--config", str(ROOT / "configs/demo.yaml"), "--data", str(SAMPLE), "--norms", "instance,batch",
            "--batch-sizes", "2", "--seeds", "1", "--first-seed", "1", "--budget-samples", "2", "--evaluations", "1",
            "--experiment", "submitit-test", "--tracking-uri", uri, "--executor", "submitit-local",
            "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "validation.hd95=false", "--set", "train.amp=none", "--set", "tracking.log_model=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "submitit job" in result.output
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("submitit-test").experiment_id
    (parent,) = client.search_runs([exp], "tags.`medseg.role` = 'parent'")
    children = client.search_runs([exp], "tags.`medseg.role` = 'child'")
    assert parent.info.status == "FINISHED"
    keys = {c.data.tags["medseg.sweep_key"] for c in children}
    assert keys == {"instance_bs2_seed1", "batch_bs2_seed1"}  # --first-seed
    assert {c.data.params["seed"] for c in children} == {"1"}
    assert all(c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] == parent.info.run_id
               for c in children)
    assert list((tmp_path / "runs" / "sweeps").glob("*/submitit/*"))  # submitit's job folders
    again = CliRunner().invoke(app, args)  # resume semantics unchanged: nothing left to run
    assert again.exit_code == 0 and again.output.count("finished before, skipped") == 2
