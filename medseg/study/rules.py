"""The normalizer study's fixed rules, written once (light module: no torch, no scipy)."""

PLATEAU_DELTA = 0.01
"""A child is *not converged* when its last validation's mean Dice exceeds the one before by more
than this (``medseg sweep/report --plateau-delta``)."""
