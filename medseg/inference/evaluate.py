"""Evaluate a model directory on a labelled MSD dataset, in each case's original geometry."""
from __future__ import annotations


from medseg.data.dataset import DatasetSpec
from medseg.data.fingerprint import read_pair
from medseg.errors import DataError
from medseg.evaluation import per_class_metrics, summarize
from medseg.inference.predictor import Predictor
from medseg.progress import ProgressFn, silent


def evaluate_cases(predictor: Predictor, spec: DatasetSpec, case_ids: list[str] | None = None, *,
                   hd95: bool = True, progress: ProgressFn = silent) -> tuple[list[dict], dict]:
    """Predict each case and score it against its reference label on the input's voxel grid.

    Each image/label pair passes the same checks as in training (:func:`medseg.data.fingerprint.read_pair`:
    same shape, same affine within 1e-3 mm, declared label values), so a label of another shape or
    shifted in space is refused, not scored.

    Returns:
        ``(rows, summary)``: rows are ``{"case_id", "dice_<name>", "hd95_<name>"}`` (HD95 in mm);
        summary is the mean over cases per label name: ``{name: {"dice", "hd95"}}``.

    Raises:
        DataError: the dataset's labels are not the model's, or a pair fails the checks.
    """
    labels = predictor.plan.labels
    if {int(k): v for k, v in labels.items()} != spec.labels:
        raise DataError(f"the dataset's labels {spec.labels} are not the model's {dict(labels)}: "
                        "Dice would compare different structures", spec.root / "dataset.json")
    cases = [c for c in spec.cases if case_ids is None or c.case_id in set(case_ids)]
    rows, metrics = [], []
    for case in progress(cases, "evaluate", len(cases)):
        ref_img, _image, ref = read_pair(case, spec.labels, predictor.plan.in_channels)
        pred = predictor.predict_file(case.image)
        m = per_class_metrics(pred.labels, ref, predictor.plan.num_classes,
                              spacing=ref_img.header.get_zooms()[:3], hd95=hd95)
        metrics.append(m)
        row = {"case_id": case.case_id}
        for k in range(1, predictor.plan.num_classes):
            row[f"dice_{labels[k]}"] = m[k]["dice"]
            row[f"hd95_{labels[k]}"] = m[k]["hd95"]
        rows.append(row)
    summary = {labels[k]: v for k, v in summarize(metrics).items()}
    return rows, summary
