"""Data: dataset.json reading, case checks, folds, fingerprint, NIfTI IO."""
from medseg.data.dataset import Case, DatasetSpec, case_id, read_dataset
from medseg.data.fingerprint import compute_fingerprint, load_or_compute_fingerprint
from medseg.data.folds import kfold_splits

__all__ = ["Case", "DatasetSpec", "case_id", "read_dataset", "compute_fingerprint", "load_or_compute_fingerprint",
           "kfold_splits"]
