"""A short real training on the embedded sample, read back from MLflow with MlflowClient."""
import json

import nibabel as nib
import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from medseg.cli import app
from medseg.inference.predictor import Predictor, label_image
from medseg.keys import BN_MODE_CASE_DICE, BN_MODE_DICE_MEAN
from medseg.precision import effective_amp
from medseg.models.directory import load_model_dir
from tests.conftest import EPOCHS, ROOT, SAMPLE


def test_cli_prints_dice_per_class(trained):
    out = trained["output"]
    assert "Anterior" in out and "Posterior" in out and "Dice" in out


def test_mlflow_params_tags_metrics(trained):
    run, client = trained["run"], trained["client"]
    assert run.info.status == "FINISHED"
    # medseg's experiments open in MLflow's model-training view, not the GenAI one
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    p = run.data.params
    assert p["model.norm"] == "instance" and p["train.batch_size"] == "2" and p["data.fold"] == "1"
    assert p["plan.patch_size"] == "[40, 56, 40]" and "plan.target_spacing" in p and "train.lr" in p
    t = run.data.tags
    assert t["norm"] == "instance" and t["batch_size"] == "2" and t["fold"] == "1"
    assert t["dataset"] == "Hippocampus" and t["medseg_version"] and t["git_commit"]
    assert t["compile"] == "False" and t["compile_reason"] == "auto: not on CPU"  # what train.compile: auto chose
    assert t["amp"] == effective_amp("cpu", "bf16")  # what ran: bf16 where this CPU has it natively
    assert t["medseg.single_example_conv"] == "onednn"  # tells these runs from those before the routing
    for key in ("train_loss", "learning_rate", "val_dice_Anterior", "val_dice_Posterior", "val_dice_mean",
                "seconds_per_iteration", "patches_per_second", "peak_memory_mb"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == list(range(EPOCHS)), key
    assert all(0 <= m.value <= 1 for m in client.get_metric_history(run.info.run_id, "val_dice_mean"))
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "learning_rate"), key=lambda m: m.step)]
    assert lrs[1] < lrs[0]  # poly schedule decays
    m = run.data.metrics
    assert 0 <= m["best_val_dice_Anterior"] <= 1 and 0 <= m["best_val_dice_Posterior"] <= 1
    # HD95 (mm) per label: the mean over the validation cases where it is defined (a label predicted
    # and present), as in the run's validation_cases.json; not logged where it is defined for none
    cases = json.loads((trained["run_dir"] / "validation_cases.json").read_text())
    for k, name in ((1, "Anterior"), (2, "Posterior")):
        per_case = [c[str(k)]["hd95"] for c in cases if np.isfinite(c[str(k)]["hd95"])]
        if per_case:
            assert m[f"best_val_hd95_{name}"] == pytest.approx(np.mean(per_case)) and m[f"best_val_hd95_{name}"] >= 0
        else:
            assert f"best_val_hd95_{name}" not in m


def test_mlflow_artifacts(trained):
    client, run_id = trained["client"], trained["run"].info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "split.json", "fingerprint.json", "plots", "model"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/learning_curve.png",
                                                                         "plots/validation_slices.png"}
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {"model/medseg_model.json", "model/weights.pt"}
    local = client.download_artifacts(run_id, "split.json", str(trained["work"]))
    split = json.loads(open(local).read())
    assert not set(split["train"]) & set(split["val"])


def test_model_dir_reloads_and_predicts_in_input_geometry(trained, tmp_path):
    model = load_model_dir(trained["run_dir"] / "model")
    case = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))[0]
    pred = Predictor(model).predict_file(case)
    src = nib.load(case)
    assert pred.labels.shape == src.shape and pred.labels.dtype == np.uint8
    out = tmp_path / "seg.nii.gz"
    nib.save(label_image(pred), out)
    back = nib.load(out)
    assert np.array_equal(back.affine, src.affine)
    assert np.array_equal(back.header.get_qform(), src.header.get_qform())
    assert np.array_equal(back.header.get_sform(), src.header.get_sform())
    assert set(np.unique(np.asarray(back.dataobj))) <= {0, 1, 2}


def test_evaluate_writes_per_case_csv(trained, tmp_path):
    csv = tmp_path / "eval.csv"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(trained["run_dir"] / "model"), "--data", str(SAMPLE),
                                      "--fold-only", "--output", str(csv), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = csv.read_text().splitlines()
    split = json.loads((trained["run_dir"] / "split.json").read_text())
    assert lines[0] == "case_id,dice_Anterior,hd95_Anterior,dice_Posterior,hd95_Posterior"
    assert sorted(line.split(",")[0] for line in lines[1:]) == split["val"]
    assert "mean" in result.output


def test_batch_size_one_with_batch_norm_and_disk_cache(tmp_path, monkeypatch):
    """Any batch size from 1 (batch norm included), deep supervision, and the PersistentDataset disk cache."""
    from medseg.config import load_config
    from medseg.training.run import run_training

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs/demo.yaml", [
        f"data.root={SAMPLE}", "train.batch_size=1", "model.norm=batch", "model.deep_supervision=true",
        "data.cache=disk", "train.epochs=1", "train.iterations_per_epoch=2", "validation.hd95=false",
        "train.warmup_epochs=1", "train.optimizer=adamw", "train.lr=0.001"])
    result = run_training(cfg)
    assert set(result.val_dice) == {"Anterior", "Posterior"}
    assert list((tmp_path / ".medseg_cache" / "preprocessed").glob("*.pt")), "disk cache written"
    assert (tmp_path / "mlflow.db").exists()  # the default local store
    loaded = load_model_dir(result.model_dir)
    assert loaded.spec.norm == "batch" and loaded.spec.deep_supervision
    # the final network's Dice with each window's own and with re-estimated statistics, per case
    metrics = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.run_id).data.metrics
    for mode in ("window", "precise"):
        assert 0 <= metrics[BN_MODE_DICE_MEAN[mode]] <= 1
        cases = [k for k in metrics if k.startswith(BN_MODE_CASE_DICE[mode] + "/")]
        assert len(cases) == len([k for k in metrics if k.startswith(BN_MODE_CASE_DICE["running"] + "/")]) > 0


def test_training_and_validation_cases_are_mlflow_dataset_inputs(trained):
    """Read back from the store: one dataset per context, its digest over the case ids and the
    files' SHA-256 (so a changed file changes it), the source folder, and the cases of split.json."""
    from medseg.data.dataset import case_list_digest, read_dataset

    run = trained["client"].get_run(trained["run"].info.run_id)
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    split = json.loads((trained["run_dir"] / "split.json").read_text())
    spec = read_dataset(SAMPLE)
    by_id = {c.case_id: c for c in spec.cases}
    for context, key in (("training", "train"), ("validation", "val")):
        dataset = inputs[context]
        assert json.loads(dataset.profile)["case_ids"] == split[key]
        assert dataset.digest == case_list_digest([by_id[i] for i in split[key]])
        assert json.loads(dataset.source)["uri"] == str(spec.root)
    assert inputs["training"].digest != inputs["validation"].digest


def test_system_metrics_are_logged_by_the_training_run(trained):
    """MLflow's system metrics monitor sampled the run (every 0.5 s here): CPU and memory, read back."""
    metrics = trained["client"].get_run(trained["run"].info.run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_a_fine_tuned_run_starts_at_the_source_models_dice(trained, tmp_path):
    """--init-from the shared trained model (fold 1), with a learning rate too small to move the
    weights: its first validation gives the source model's Dice on the same cases (the same
    weights), where a fresh network gives chance. Every tensor matched, so none was skipped."""
    from medseg.cli import app
    src = trained["client"].get_run(trained["run"].info.run_id)
    best = int(src.data.tags["best_epoch"])
    source_dice = {m.step: m.value for m in trained["client"].get_metric_history(src.info.run_id, "val_dice_mean")}[best]
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    result = CliRunner().invoke(app, [
        "train", "--config", str(ROOT / "configs/demo.yaml"), "--data", str(SAMPLE), "--fold", "1", "--quiet",
        "--tracking-uri", uri, "--init-from", str(trained["run_dir"] / "model"),
        "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"data.cache_dir={trained['work'] / 'cache'}",
        "--set", "train.epochs=1", "--set", "train.iterations_per_epoch=1", "--set", "train.lr=1e-12",
        "--set", "data.cache=none", "--set", "validation.hd95=false", "--set", "tracking.log_model=false"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    tuned = client.get_metric_history(run.info.run_id, "val_dice_mean")[0].value
    # the same weights up to one step of 1e-12: the Dice agrees to float rounding of the argmax
    assert abs(tuned - source_dice) < 1e-3, (tuned, source_dice)
    assert run.data.tags["init_skipped"] == "0" and int(run.data.tags["init_loaded"]) > 10
    assert run.data.tags["init_plan_differs"] == "none"
