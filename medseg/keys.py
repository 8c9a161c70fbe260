"""Names used in several places, in a light module (no torch): the norms, and how a free text
(a label or case name) becomes an MLflow key."""
from __future__ import annotations

import re

NORMS = ("instance", "group", "layer", "batch", "none")
"""The normalization layers, in the order tables and plots show them (``medseg.models.norms``
builds each; the config schema, the CLI help, the sweep and the report read this tuple)."""

_MLFLOW_KEY_REFUSED = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(text: str, *, allow_slash: bool = True) -> str:
    """``text`` with every character MLflow refuses in a metric, param or tag key replaced by ``_``
    (MLflow accepts letters, digits, ``_ - . /`` and space). With ``allow_slash=False`` a ``/`` is
    replaced too: for one component of a ``a/b/c`` key, such as a label name."""
    key = _MLFLOW_KEY_REFUSED.sub("_", str(text))
    return key if allow_slash else key.replace("/", "_")
