"""Training: the loop, optimizer and schedule, checkpoints, and a whole run."""
