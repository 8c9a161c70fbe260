"""Inference: sliding window, TTA, mapping back to the input geometry."""
