"""Names used in several places, in a light module (no torch): how a free text (a label or case
name) becomes an MLflow key. (The norm names are :data:`medseg.norm_registry.NORMS`.)"""
from __future__ import annotations

import re

from medseg.errors import ConfigError

_MLFLOW_KEY_REFUSED = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(text: str, *, allow_slash: bool = True) -> str:
    """``text`` with every character MLflow refuses in a metric, param or tag key replaced by ``_``
    (MLflow accepts letters, digits, ``_ - . /`` and space). With ``allow_slash=False`` a ``/`` is
    replaced too: for one component of a ``a/b/c`` key, such as a label name."""
    key = _MLFLOW_KEY_REFUSED.sub("_", str(text))
    return key if allow_slash else key.replace("/", "_")


SWEEP_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a sweep id: a plain name (a folder, a query)


def check_sweep_id(sweep_id: str, where: str = "--sweep-id", hint: str = "") -> str:
    """``sweep_id`` if it is a plain name (letters, digits, ``. _ -``, not starting with ``.`` or
    ``-``, at most 100 characters), so it can name a folder and be put in an MLflow query.

    Raises:
        ConfigError: naming ``where`` and what a sweep id may hold (then ``hint``).
    """
    if not isinstance(sweep_id, str) or not SWEEP_ID_PATTERN.fullmatch(sweep_id):
        raise ConfigError(f"a sweep id is a plain name of letters, digits, '.', '_' and '-' (starting with a letter "
                          f"or digit, at most 100 characters), not {sweep_id!r:.80}{hint}", where)
    return sweep_id


# MLflow metric keys of a training run (each epoch's row, then the run's summary)
EPOCH = "epoch"  # a history row's epoch: the metrics' step, not a metric itself
TRAIN_LOSS = "train_loss"
LEARNING_RATE = "learning_rate"
SECONDS_PER_ITERATION = "seconds_per_iteration"
PATCHES_PER_SECOND = "patches_per_second"
PEAK_MEMORY_MB = "peak_memory_mb"
VAL_DICE_MEAN = "val_dice_mean"  # mean over foreground labels of the epoch's validation Dice
BEST_DICE_MEAN = "best_val_dice_mean"  # the same for the best epoch's model, validated again at the end
FINAL_DICE_MEAN = "final_val_dice_mean"  # the final model's (the normalizer study compares these)
FINAL_CASE_DICE = "final_case_dice"  # final_case_dice/<case id>/<label name>
# a batch-norm run's final network inferred with other statistics (medseg/training/bn_modes.py):
# "running" is the default (FINAL_CASE_DICE), "window" each window's own, "precise" re-estimated
BN_MODES = ("running", "window", "precise")
PRECISE_BN_PATCHES = 480  # training patches (stream indices 0..479) that re-estimate batch norm's statistics
BN_MODE_CASE_DICE = {"running": FINAL_CASE_DICE, "window": "final_bn_window_case_dice",
                     "precise": "final_bn_precise_case_dice"}
BN_MODE_DICE_MEAN = {"running": FINAL_DICE_MEAN, "window": "final_bn_window_dice_mean",
                     "precise": "final_bn_precise_dice_mean"}
BATCH_DEPENDENCE_TRAIN = "final_batch_dependence_train"
BATCH_DEPENDENCE_EVAL = "final_batch_dependence_eval"

# MLflow tags medseg sets and reads back
RUN_DIR_TAG = "medseg.run_dir"  # a run's local folder (resume by run id, the sweep's restarts)
SWEEP_ID_TAG = "medseg.sweep_id"
SWEEP_ROLE_TAG = "medseg.role"  # "parent" or "child"
SWEEP_KEY_TAG = "medseg.sweep_key"  # a child's cell: <norm>_bs<batch size>_seed<seed>
SUPERSEDED_TAG = "medseg.superseded"  # "true" on a child run replaced by a later attempt
FAILED_CHILDREN_TAG = "medseg.failed_children"
SINGLE_EXAMPLE_CONV_TAG = "medseg.single_example_conv"  # "onednn": a run whose code routes N = 1 (models/onednn_conv.py)
PLANNED_TAG = "medseg.planned_network"  # "true" on a run whose config had `auto` values (planned from the data)
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under its parent in the UI
