"""Ray Tune search over restoration models and training settings, tracked in MLflow."""
