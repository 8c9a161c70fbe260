"""medseg.tracking: the Tracker's MLflow writes."""
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
