"""The end-of-search summary: best trial, its parameters, its validation scores, where the zip is."""
from __future__ import annotations

from imgrestore.tracking.tune_callback import flatten

SCORE_KEYS = ("score", "ssim", "masked_ssim", "hist_sim")


def trials_table(results, metric: str = "score", mode: str = "max", top: int = 10) -> str:
    frame = results.get_dataframe(filter_metric=metric, filter_mode=mode)
    if frame.empty:
        return "(no trial reported)"
    cols = [c for c in ("trial_id", "config/model/name", "config/model/base_channels", "config/lr", *SCORE_KEYS,
                        "training_iteration") if c in frame]
    frame = frame.sort_values(metric, ascending=mode == "min")[cols].head(top)
    frame.columns = [c.replace("config/", "").replace("model/", "model.") for c in frame.columns]
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def summary_text(best, metric: str, zip_path, model_uri: str, version: str, experiment_dir, tracking_uri) -> str:
    m = best.metrics
    lines = ["", "=" * 72, "Best trial", "=" * 72,
             f"trial            {m.get('trial_id')}  (epoch {m.get('epoch')})"]
    lines += [f"{k:<16} {m[k]:.4f}" for k in SCORE_KEYS if k in m]
    lines += ["parameters:"]
    lines += [f"  {k:<28} {v}" for k, v in sorted(flatten(best.config).items()) if k != "data_dir"]
    lines += [f"champion         {model_uri} (version {version})",
              f"submission       {zip_path}",
              f"experiment dir   {experiment_dir}",
              f"MLflow UI        mlflow ui --backend-store-uri {tracking_uri}", "=" * 72]
    return "\n".join(lines)
