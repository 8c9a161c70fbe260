"""The normalizer study's fixed rules, written once (light module: no torch, no scipy)."""

PLATEAU_DELTA = 0.01
"""A child is *not converged* when its last validation's mean Dice exceeds the one before by more
than this (``medseg sweep/report --plateau-delta``)."""

EXECUTORS = ("local", "slurm", "submitit-local")
"""Where a sweep's children can run (``medseg sweep --executor``; :class:`medseg.study.sweep.Execution`)."""

SLURM_TIMEOUT_MIN = 24 * 60
"""Default time limit per child on SLURM, in minutes (``--timeout-min``)."""
