"""The normalizer study's fixed rules, written once (light module: no torch, no scipy)."""

PLATEAU_DELTA = 0.01
"""A child is *not converged* when its last validation's mean Dice exceeds the one before by more
than this (``medseg sweep/report --plateau-delta``)."""

EXECUTORS = ("local", "slurm", "submitit-local")
"""Where a sweep's children can run (``medseg sweep --executor``; :class:`medseg.study.sweep.Execution`)."""

SLURM_TIMEOUT_MIN = 24 * 60
"""Default time limit per child on SLURM, in minutes (``--timeout-min``)."""

LR_RULE = "sqrt"
"""Default learning-rate rule across batch sizes (``--lr-rule``; the rules are in
:data:`medseg.study.sweep.LR_RULES`)."""

EVALUATIONS = 5
"""Default validations per child, the points of its learning curve (``--evaluations``)."""

JOBS = 1
"""Default number of children run at once (``--jobs``)."""

NEGLIGIBLE = 0.01
"""A paired difference in mean Dice whose whole 95 % CI lies within +-this is negligible
(``medseg report --negligible``): the report then says "no practical difference" rather than
"cannot tell" for a CI that contains 0."""

UNLEARNED_LABEL_DICE = 0.1
"""A child whose final model has a mean Dice below this on some label (over the validation cases)
is flagged in the report as having a label it did not learn: the plateau rule cannot see that, and
the child's mean Dice then measures a failed run, not the norm."""
