"""Everything MLflow: where runs go, starting a run, logging params, metrics and artifacts.

The default store is a local SQLite file ``mlflow.db`` in the working directory (MLflow 3's
default), overridden by ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI``. Runs are written
through :class:`mlflow.MlflowClient`, so several runs in one process never share global state.
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import mlflow.exceptions
from mlflow.entities import Metric, Param, RunTag

from medseg import __version__
from medseg.errors import MedsegError
from medseg.keys import mlflow_key

def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (absolute, in the working dir)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def existing_store(uri: str | None = None) -> str:
    """The tracking URI (:func:`resolve_tracking_uri`) of a store to read from; a local SQLite file
    that does not exist is refused, since MLflow would create an empty one (and its folders).

    Raises:
        MedsegError: the SQLite file does not exist.
    """
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise MedsegError("no MLflow store here yet (train or sweep first, or pass --tracking-uri)", uri)
    return uri


@contextmanager
def fluent_store(uri: str):
    """Within the block, MLflow's fluent API (``mlflow.*``) uses the store ``uri``; afterwards the
    process's previous setting and ``$MLFLOW_TRACKING_URI`` (which ``mlflow.set_tracking_uri``
    overwrites) are restored, so a script's later runs go where they went before."""
    from mlflow.tracking._tracking_service import utils  # the fluent API's process-wide setting
    saved, saved_env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


DATASET_RETRIES = 5  # concurrent runs logging one dataset (see Tracker.log_dataset)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""The tag MLflow 3 reads to show an experiment as model training (runs, metrics, models) rather
than GenAI (traces); set on every experiment medseg creates."""


def runs_page_urls(tracking_uri: str, base_url: str) -> list[tuple[str, str]]:
    """``(experiment name, URL of its runs table)`` for every experiment of the store that holds
    runs, most recently created first. The URL opens the runs table in MLflow's model-training
    view (``workflowType=machine_learning``; MLflow 3.x otherwise opens a GenAI overview)."""
    client = Tracker.client_for(tracking_uri)
    pages = []
    for exp in sorted(client.search_experiments(), key=lambda e: -(e.creation_time or 0)):
        if client.search_runs([exp.experiment_id], max_results=1):
            pages.append((exp.name, f"{base_url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"))
    return pages


def model_requirements() -> list[str]:
    """The pip requirements of a logged medseg model: medseg's dependencies at their installed
    versions (medseg itself must be installed where the model is served)."""
    from importlib.metadata import PackageNotFoundError, version
    pins = []
    for package in ("torch", "monai", "nibabel", "SimpleITK", "numpy", "mlflow", "pydantic", "scipy"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def resolve_model_uri(model: str, tracking_uri: str | None = None) -> Path:
    """A local model directory for ``model``: a folder as given, or one downloaded from an MLflow
    model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID`` or
    ``runs:/RUN_ID/medseg_model``) of a model logged by medseg (its ``model_dir`` artifact), into
    a temporary folder removed when the process exits.

    Raises:
        MedsegError: the URI names no model the store knows, or one without a medseg model directory.
    """
    if not model.startswith(("models:/", "runs:/")):
        return Path(model)
    import atexit
    import shutil
    import tempfile

    from medseg.models.directory import META_FILE
    uri = existing_store(tracking_uri)
    dst = Path(tempfile.mkdtemp(prefix="medseg-model-"))
    atexit.register(shutil.rmtree, dst, True)
    try:
        with fluent_store(uri):  # models:/ URIs are resolved through the fluent API's store
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(dst), tracking_uri=uri,
                                                             registry_uri=uri))
    except Exception as e:
        raise MedsegError(f"no such model in the MLflow store {uri} ({type(e).__name__}: {str(e)[:200]})",
                          model) from None
    found = [p.parent for p in local.rglob(META_FILE)]  # the model_dir artifact (named after its source folder)
    if len(found) != 1:
        raise MedsegError("this MLflow model has no medseg model directory (it was not logged by medseg)", model)
    return found[0]


GIT_TIMEOUT_S = 30  # a loaded machine (a sweep at nice 19) can take seconds to start git


def git_provenance() -> dict[str, str]:
    """Which source the running medseg is: MLflow tags ``git_commit`` (the commit of the medseg
    source tree, or ``"unknown"``), ``git_dirty`` (``"true"`` when tracked files differ from that
    commit, so the commit alone does not say what ran) and, when the commit is unknown,
    ``git_unknown_reason`` (git not installed, not a git checkout such as a wheel install, or the
    error git gave)."""
    here = Path(__file__).parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            why = (head.stderr.strip().splitlines() or ["git rev-parse failed"])[-1]
            return {"git_commit": "unknown", "git_unknown_reason": f"medseg at {here} is not in a git checkout "
                    f"(installed from a wheel?): {why[:200]}"}
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
        out = {"git_commit": head.stdout.strip(), "git_dirty": "true" if dirty.stdout.strip() else "false"}
        return out
    except FileNotFoundError:
        return {"git_commit": "unknown", "git_unknown_reason": "git is not installed"}
    except (OSError, subprocess.SubprocessError) as e:
        return {"git_commit": "unknown", "git_unknown_reason": f"{type(e).__name__}: {str(e)[:200]}"}


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """For an http(s) tracking server, ask its ``/health`` endpoint before any work starts.

    Raises:
        MedsegError: the server does not answer within ``timeout`` seconds.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.request
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except Exception as e:
        raise MedsegError(f"the MLflow tracking server does not answer ({type(e).__name__}: {e}). Start it, fix "
                          "--tracking-uri / MLFLOW_TRACKING_URI, or pass --offline to log to the local store "
                          "sqlite:///mlflow.db", tracking_uri) from None


class Tracker:
    """One MLflow run.

    Args:
        tracking_uri: the store (see :func:`resolve_tracking_uri`).
        experiment: experiment name; created if missing.
        run_name: the run's display name.
        tags: string tags (norm, batch_size, fold, dataset...); ``medseg_version`` and
            :func:`git_provenance`'s tags are added.

    Raises:
        MedsegError: the tracking store cannot be reached or written (before any training).
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str]):
        self.uri = tracking_uri
        check_reachable(tracking_uri)
        self.client = self.client_for(tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment, tags=EXPERIMENT_KIND)
            all_tags = {**tags, "medseg_version": __version__, **git_provenance()}
            self.run = self.client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
        except Exception as e:  # connection errors, permission errors, bad URIs
            raise MedsegError(f"cannot reach or write the MLflow tracking store ({type(e).__name__}: "
                              f"{str(e)[:300]}). Check the URI or unset MLFLOW_TRACKING_URI to use the local store.",
                              tracking_uri) from None
        self.run_id = self.run.info.run_id
        self.experiment_id = exp_id

    @staticmethod
    def client_for(tracking_uri: str) -> mlflow.MlflowClient:
        """An MlflowClient for ``tracking_uri``, which is also its Model Registry."""
        return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)  # one store for both

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> "Tracker":
        """Continue an existing run (marked RUNNING again), e.g. after a resume.

        Raises:
            MedsegError: the store cannot be reached or has no such run.
        """
        check_reachable(tracking_uri)
        self = cls.__new__(cls)
        self.uri = tracking_uri
        self.client = cls.client_for(tracking_uri)
        try:
            self.run = self.client.get_run(run_id)
            self.client.update_run(run_id, status="RUNNING")
        except Exception as e:
            raise MedsegError(f"cannot continue MLflow run {run_id} ({type(e).__name__}: {str(e)[:200]})",
                              tracking_uri) from None
        self.run_id = run_id
        self.experiment_id = self.run.info.experiment_id
        return self

    def has_metric(self, key: str, step: int) -> bool:
        """Whether ``key`` was already logged at ``step`` (to log nothing twice after a resume)."""
        return any(m.step == step for m in self.client.get_metric_history(self.run_id, mlflow_key(key)))

    def log_params(self, params: dict[str, str]) -> None:
        """Log parameters (values as strings; MLflow's ``log_batch`` splits them into the batches its
        store accepts)."""
        self.client.log_batch(self.run_id, params=[Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics at ``step`` (the epoch); NaN values are skipped; keys pass through :func:`mlflow_key`."""
        ts = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), ts, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=items)  # MLflow splits it into batches its store accepts

    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: dict) -> None:
        """Log a dataset input of the run (MLflow's Datasets: shown in the run's *Datasets used*),
        tagged with its ``context`` (``training`` / ``validation``).

        MLflow stores a dataset once per experiment; when two runs of a sweep log the same dataset
        at the same moment, the second insert fails on that uniqueness, and is retried (the retry
        finds the dataset and only links it to this run)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag
        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}),
                          profile=json.dumps(profile))
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
        for attempt in range(DATASET_RETRIES):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except mlflow.exceptions.MlflowException as e:
                if "UNIQUE constraint" not in str(e) or attempt == DATASET_RETRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Add or overwrite string tags."""
        self.client.log_batch(self.run_id, tags=[RunTag(mlflow_key(k), str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one local file into the run's artifacts (under ``artifact_path``)."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local folder's files into the run's artifacts (under ``artifact_path``)."""
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def start_system_metrics(self, interval_s: float | None, resume: bool = False) -> None:
        """Sample CPU, memory, disk, network (and GPU where pynvml sees one) every ``interval_s``
        seconds into the run's ``system/*`` metrics, with MLflow's SystemMetricsMonitor (needs
        psutil), until :meth:`end`. ``None`` does nothing."""
        if not interval_s:
            return
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop notices per run
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=resume,
                                             tracking_uri=self.uri)
        self._monitor.start()

    def log_model(self, model_dir: str | Path, in_channels: int,
                  intensity_range: tuple[float, float] | None = None) -> str:
        """Log a model directory as this run's MLflow Model (pyfunc flavor, "models from code"; see
        :mod:`medseg.inference.pyfunc`) named ``medseg_model``, with its signature, an input example
        and pinned requirements. The input example (its values spanning ``intensity_range``, a CT
        plan's clipping window, when given) is checked by MLflow, which loads the model and
        predicts it once (a few seconds).

        Returns:
            the logged model's URI (``models:/m-...``); ``runs:/<run id>/medseg_model`` loads it too.
        """
        import mlflow.pyfunc

        from medseg.inference import pyfunc
        # the logged model belongs to the run's experiment (Model.log alone would use the active one)
        logged = self.client.create_logged_model(self.experiment_id, name=pyfunc.LOGGED_MODEL_NAME,
                                                 source_run_id=self.run_id, model_type="segmentation")
        with fluent_store(self.uri):  # Model.log writes through the fluent API's store
            info = mlflow.models.Model.log(
                None, mlflow.pyfunc, name=pyfunc.LOGGED_MODEL_NAME, run_id=self.run_id, model_id=logged.model_id,
                python_model=str(pyfunc.CODE_FILE), artifacts={pyfunc.MODEL_DIR_ARTIFACT: str(model_dir)},
                signature=pyfunc.signature(in_channels),
                input_example=pyfunc.input_example(in_channels, intensity_range=intensity_range),
                pip_requirements=model_requirements())
        return info.model_uri

    def register_model(self, model_uri: str, name: str, alias: str | None) -> str:
        """Register ``model_uri`` in the Model Registry as a new version of ``name`` (created if
        missing) and point ``alias`` (e.g. ``champion``) at it.

        Returns:
            the version's URI, ``models:/NAME/VERSION``.

        Raises:
            MedsegError: the store refuses (for example a file store, which has no registry).
        """
        try:
            with fluent_store(self.uri):  # MLflow resolves the models:/ source through the fluent API's store
                version = mlflow.register_model(model_uri, name)  # creates the registered model if missing
                if alias:
                    self.client.set_registered_model_alias(name, alias, version.version)
        except mlflow.exceptions.MlflowException as e:
            raise MedsegError(f"cannot register the model as {name!r} ({str(e)[:300]})", self.uri) from None
        return f"models:/{name}/{version.version}"

    def end(self, status: str = "FINISHED") -> None:
        """Stop the system metrics (if started) and mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            monitor.finish()
            self._monitor = None
        self.client.set_terminated(self.run_id, status)


class RankTracker:
    """The tracker of a DDP rank other than 0: knows the run's id, logs nothing (rank 0 logs for all).

    Has :class:`Tracker`'s methods; ``has_metric`` answers True so a resuming rank never re-logs.
    """

    uri = "(rank 0 logs)"

    def __init__(self, run_id: str):
        self.run_id = run_id

    def has_metric(self, key: str, step: int) -> bool:
        return True

    def __getattr__(self, name):  # log_metrics, log_params, set_tags, log_artifact(s), end
        return lambda *args, **kwargs: None
