"""A training run: configuration, setup, the loop, objectives, checkpoints, the run directory, the memory plan."""
