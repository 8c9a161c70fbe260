"""The normalizer study: sweeps over (norm, batch size, seed) and their reports."""
