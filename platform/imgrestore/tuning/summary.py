"""The end-of-search summary: best trial, its parameters, its validation scores, where the zip is."""
from __future__ import annotations

from imgrestore.tracking.tune_callback import flatten
from imgrestore.tuning.baselines import label
from imgrestore.tuning.decoding import AS_IS

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


def runs_page(experiment_id: str | None, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI page with a search's training runs. MLflow 3 opens an experiment on its GenAI page unless
    the link asks for the machine-learning view."""
    path = f"#/experiments/{experiment_id}/runs" if experiment_id else "#/experiments"
    return f"{base}/{path}?workflowType=machine_learning"


def summary_text(metrics: dict, config: dict, experiment_dir, tracking_uri, experiment_id: str | None = None) -> str:
    """metrics: the reported row of the best trial's best epoch; config: its trial's config."""
    lines = ["", "=" * 72, "Best trial", "=" * 72,
             f"trial            {metrics.get('trial_id')}  (epoch {metrics.get('epoch')})"]
    lines += [f"{k:<16} {metrics[k]:.4f}" for k in (*SCORE_KEYS, "chroma_gain", "hole_chroma", "score_gray")
              if k in metrics]
    lines += ["parameters:"]
    lines += [f"  {k:<28} {v}" for k, v in sorted(flatten(config).items()) if k not in ("data_dir", "preproc_csv")]
    lines += [f"experiment dir   {experiment_dir}",
              f"MLflow UI        mlflow ui --backend-store-uri {tracking_uri}",
              f"                 then open the training runs: {runs_page(experiment_id)}"]
    return "\n".join(lines)


def champion_text(choice, baselines, model_uri: str, version: str, alias, zip_path, folds=None) -> str:
    """The champion against the classical restorers on the same validation images, and where it went; `folds`
    (tuning.baselines.FoldScores): a classical champion scored on every fold."""
    lines = ["=" * 72, "Champion (validation score, the same images for every row)", "=" * 72]
    lines += [f"  {label(r.name, getattr(r, 'decoding', AS_IS)):<28} {r.score:.4f}   S {r.ssim:.4f}  "
              f"M {r.masked_ssim:.4f}  C {r.hist_sim:.4f}" for r in baselines.itertuples()]
    if choice.kind == "trial":
        lines.append(f"  {label('trial ' + choice.name, choice.decoding):<28} {choice.score:.4f}   <- champion: "
                     f"{choice.margin:+.4f} over the best classical restorer ({choice.best_classical})"
                     + (f"; per image {choice.advantage.text()}" if choice.advantage else ""))
    else:
        lines.append(f"  champion: the classical restorer {label(choice.name, choice.decoding)} - NO learned model "
                     + (f"could {choice.rule()} on validation (the best trial: {choice.trial_score:.4f}, "
                        + (f"per image {choice.advantage.text()})" if choice.advantage else
                           f"{choice.trial_score - choice.score:+.4f})")
                        if choice.trial_higher_but_refused else
                        "beat it on validation (more data, epochs or another space needed)"))
    if folds is not None:
        lines.append(f"  the champion on every fold (a fold's hue prior is fitted on the others): {folds.text()}"
                     " - the forecast for unseen photos")
    lines += [f"registered       version {version}; alias: {alias.reason}"
              + ("" if alias.moved else f" -> the submission uses version {alias.champion_version}"),
              f"champion         {model_uri}",
              f"submission       {zip_path}", "=" * 72]
    return "\n".join(lines)
