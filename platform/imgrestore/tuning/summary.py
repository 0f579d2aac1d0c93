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
    # each trial's row is its best epoch (filter_metric), so training_iteration is that epoch
    frame.columns = [c.replace("config/", "").replace("model/", "model.").replace("training_iteration", "best_epoch")
                     for c in frame.columns]
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def summary_text(metrics: dict, config: dict, zip_path, model_uri: str, version: str, experiment_dir,
                 tracking_uri) -> str:
    """metrics: the reported row of the champion's epoch; config: its trial's config."""
    lines = ["", "=" * 72, "Best trial", "=" * 72,
             f"trial            {metrics.get('trial_id')}  (epoch {metrics.get('epoch')})"]
    lines += [f"{k:<16} {metrics[k]:.4f}" for k in SCORE_KEYS if k in metrics]
    lines += ["parameters:"]
    lines += [f"  {k:<28} {v}" for k, v in sorted(flatten(config).items()) if k not in ("data_dir", "preproc_csv")]
    lines += [f"champion         {model_uri} (version {version})",
              f"submission       {zip_path}",
              f"experiment dir   {experiment_dir}",
              f"MLflow UI        mlflow ui --backend-store-uri {tracking_uri}", "=" * 72]
    return "\n".join(lines)
