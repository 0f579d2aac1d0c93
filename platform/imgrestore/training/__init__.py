"""Training one restoration model: data, the loop, checkpoints."""
