"""medseg.tracking: the Tracker's MLflow writes."""
from pathlib import Path

from tests.conftest import fresh_store


def test_a_dataset_logged_by_two_runs_at_once_is_retried(tmp_path, monkeypatch):
    """Two sweep children logging the same dataset at the same moment: MLflow's insert of the second
    fails on its uniqueness (seen in a submitit sweep: `UNIQUE constraint failed: datasets...`); the
    retry links the dataset that the first inserted."""
    import mlflow

    from medseg.tracking import Tracker

    uri = fresh_store(tmp_path / "store.db")
    first, second = Tracker(uri, "e", "a", {}), Tracker(uri, "e", "b", {})
    first.log_dataset("d", "digest1", "/data", "training", {"num_cases": 1})
    real, calls = second.client.log_inputs, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # as if the other run's insert had won the race
            raise mlflow.exceptions.MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                                    "datasets.experiment_id, datasets.name, datasets.digest")
        return real(*args, **kwargs)

    monkeypatch.setattr(second.client, "log_inputs", racing)
    second.log_dataset("d", "digest1", "/data", "training", {"num_cases": 1})
    assert len(calls) == 2
    (inp,) = second.client.get_run(second.run_id).inputs.dataset_inputs
    assert inp.dataset.digest == "digest1"


def test_git_provenance_names_the_commit_or_says_why_it_cannot(monkeypatch):
    import subprocess

    from medseg import tracking
    here = tracking.git_provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(tracking.__file__).parent, capture_output=True,
                          text=True)
    if head.returncode == 0:  # a git checkout (CI's clean clone, a developer's tree)
        assert here["git_commit"] == head.stdout.strip() and here["git_dirty"] in ("true", "false")
        assert "git_unknown_reason" not in here
    monkeypatch.setenv("PATH", "/nonexistent")
    assert tracking.git_provenance() == {"git_commit": "unknown", "git_unknown_reason": "git is not installed"}
    monkeypatch.undo()

    def not_a_checkout(*args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: not a git repository (or any parent)")
    monkeypatch.setattr(tracking.subprocess, "run", not_a_checkout)
    out = tracking.git_provenance()
    assert out["git_commit"] == "unknown" and "not a git repository" in out["git_unknown_reason"]


def test_many_metrics_and_params_are_logged_without_chunking_by_hand(tmp_path):
    """MLflow's log_batch splits what exceeds its per-call limits (1000 metrics, 100 params)."""
    from medseg.tracking import Tracker

    tracker = Tracker(fresh_store(tmp_path / "store.db"), "e", "many", {})
    tracker.log_metrics({f"final_case_dice/case{i}/a": i / 1500 for i in range(1500)}, step=3)
    tracker.log_params({f"p{i}": i for i in range(150)})
    run = tracker.client.get_run(tracker.run_id)
    assert len(run.data.metrics) == 1500 and run.data.metrics["final_case_dice/case1499/a"] == 1499 / 1500
    assert len(run.data.params) == 150
