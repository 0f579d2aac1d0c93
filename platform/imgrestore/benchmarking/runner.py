"""The whole benchmark, stage by stage; `run_benchmark(cfg)` returns everything `render` needs.

Stages: build (or reuse) a DACON dataset from photos -> preprocess (embeddings, scene clusters, group folds)
-> the search (Ray Tune, the classical restorers scored on its validation images first) -> the champion as
pipelines/tune.py picks it (best checkpoint, prefill polish, classical restorers) -> the ablations of the best
trial's config and the seed's recipe (1-CPU Ray tasks side by side) -> every method on the held-out test set
-> `make demo`'s search and champion (benchmarking.demo), scored on the held-out images of photos it never trained
on -> 512 px inference -> embedding throughput -> UMAP / HDBSCAN sizes.
"""
from __future__ import annotations

import copy
import hashlib
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from imgrestore.benchmarking import demo as demo_stage
from imgrestore.benchmarking import quality, throughput
from imgrestore.benchmarking.report import Stages, load_average, machine_info, model_desc

ROOT = Path(__file__).resolve().parents[3]  # the repository (platform/imgrestore/benchmarking/runner.py)
RESULT_VERSION = 3  # bumped when BenchResult changes: --rerender refuses an older saved result
CHAMPION, BEST_TRIAL, SEED = "platform champion", "best trial (lost on validation)", "seed recipe, KFold validation"
UNPOLISHED = "(f) no prefill polish"


@dataclass
class BenchConfig:
    photos: str                       # a folder of colour photos, or "bundled"
    work: Path                        # datasets, Tune storage, MLflow store, checkpoints
    size: int = 256
    n_train: int = 400
    n_test: int = 100
    budget_epochs: int | None = None  # overrides the space's epochs (trials, ablations, seed recipe) when set
    search_samples: int | None = None  # overrides the space's num_samples when set
    seed_channels: int = 8
    space: Path = ROOT / "search_spaces" / "cpu.yaml"
    cluster_sizes: tuple = (1000, 5000, 30000)
    cluster_timeout: float = 300.0
    infer_images: int = 4
    infer_size: int = 512
    quick: bool = False
    seed: int = 0
    command: str = ""

    @classmethod
    def quick_preset(cls, **kw) -> "BenchConfig":
        base = dict(size=64, n_train=30, n_test=6, budget_epochs=2, search_samples=2, seed_channels=4,
                    cluster_sizes=(200, 400), cluster_timeout=120.0, infer_images=2, infer_size=128, quick=True)
        return cls(**{**base, **kw})


@dataclass
class BenchResult:
    cfg: BenchConfig
    machine: dict
    dataset: dict
    preprocess: dict
    quality: dict                      # method -> {"frame": per-image test scores, "kind", "val_score", ...}
    ablations: dict                    # label -> the same, for the best trial's ablations
    champion: dict                     # the choice, the best trial, its polish, the search's baselines
    trials: list
    search: dict
    inference: list
    embedding: list
    clustering: dict
    stages: list
    load_end: str = ""
    demo: dict | None = None           # make demo's champion on the held-out images of photos it never trained on
    version: int = RESULT_VERSION
    notes: list = field(default_factory=list)


def load_saved(saved: Path) -> BenchResult:
    """A result `pipelines/benchmark.py` saved (its --work/last_result.pkl), refused when another version of the
    benchmark wrote it."""
    try:
        res = pickle.loads(Path(saved).read_bytes())
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as e:
        raise ValueError(f"{saved}: not a saved benchmark result ({type(e).__name__}: {e})") from None
    if getattr(res, "version", 1) != RESULT_VERSION:
        raise ValueError(f"{saved}: saved by another version of the benchmark (result version "
                         f"{getattr(res, 'version', 1)}, this one reads {RESULT_VERSION}); run the benchmark again")
    return res


# -- data and the space -----------------------------------------------------------------------------------------
def photo_sources(photos: str):
    from imgrestore.data.build import photos_in
    from imgrestore.data.embedded import bundled_photos

    if photos == "bundled":
        return bundled_photos(), "the bundled photos (scikit-image, scikit-learn, matplotlib, assets/photos)"
    return photos_in(photos), str(Path(photos).resolve())


def build_data(cfg: BenchConfig) -> tuple[Path, dict]:
    from imgrestore.data.build import BuildConfig, build_dataset

    sources, origin = photo_sources(cfg.photos)
    tag = hashlib.sha256(f"{origin}:{len(sources)}".encode()).hexdigest()[:8]
    out = cfg.work / "datasets" / f"bench-{tag}-{cfg.size}px-{cfg.n_train}x{cfg.n_test}-s{cfg.seed}"
    reused = (out / "sources.csv").is_file()
    if not reused:
        build_dataset(sources, out, BuildConfig(size=cfg.size, n_train=cfg.n_train, n_test=cfg.n_test,
                                                seed=cfg.seed), overwrite=True, progress=False)
    src = pd.read_csv(out / "sources.csv")
    return out, {"path": str(out), "origin": origin, "photos": len(sources), "reused": reused,
                 "train_photos": int(src[src.split == "train"].photo.nunique()),
                 "test_photos": int(src[src.split == "test"].photo.nunique()),
                 "n_train": int((src.split == "train").sum()), "n_test": int((src.split == "test").sum())}


def bench_space(cfg: BenchConfig, preproc_csv: str):
    """The space as given, but for what the benchmark must change; returns (space, the changes in words)."""
    from imgrestore.tuning.space import check_space, load_space

    space = load_space(cfg.space)
    space.name = f"{space.name}-benchmark"  # its own MLflow experiment
    config, changes = copy.deepcopy(space.config), []
    config["preproc_csv"] = preproc_csv
    if cfg.search_samples:
        space.num_samples = cfg.search_samples
        changes.append(f"num_samples {cfg.search_samples}")
    if config.get("image_size") != cfg.size:  # train and validate at the test images' size
        changes.append(f"image_size {config.get('image_size')} -> {cfg.size}")
        config["image_size"] = cfg.size
    sched = dict(space.scheduler or {"name": "fifo"})
    if cfg.budget_epochs:
        config["epochs"] = cfg.budget_epochs
        changes.append(f"epochs {cfg.budget_epochs}")
        if sched.get("name") == "asha":  # ASHA's rungs must fit the new budget
            sched.update(max_t=cfg.budget_epochs, grace_period=min(int(sched.get("grace_period", 1)),
                                                                   max(1, cfg.budget_epochs // 2)))
    net = config["model"].get("net_size")
    if cfg.quick or (isinstance(net, int) and net > cfg.size):  # the network cannot work above the image size
        if net is not None:
            changes.append(f"model.net_size {net} -> null")
        config["model"] = {**config["model"], "net_size": None}
    if cfg.quick or (sched.get("name") == "asha" and isinstance(config["epochs"], int) and config["epochs"] < 3):
        if sched.get("name") != "fifo":
            changes.append("scheduler fifo")
        sched = {"name": "fifo"}
    if cfg.quick:  # toy batches and validation: the quick run checks the machinery, not the quality
        config.update(batch_size=4, max_val_images=8)
        changes.append("batch_size 4, max_val_images 8")
    space.config, space.scheduler = config, sched
    check_space(space)
    return space, changes


# -- the search and its champion -----------------------------------------------------------------------------
def shown_path(path) -> str:
    """A path as the docs show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def search(cfg: BenchConfig, space, data_dir: Path):
    from imgrestore.tracking import setup_tracking
    from imgrestore.tuning.search import run_search

    uri = setup_tracking(f"sqlite:///{(cfg.work / 'mlflow.db').resolve()}")
    t0 = time.perf_counter()
    outcome = run_search(space, data_dir, cfg.work / "runs", uri, seed=cfg.seed, verbose=0)
    info = {"wall_s": time.perf_counter() - t0, "slots": int(space.max_concurrent_trials or 1),
            "n_trials": len(outcome.results), "scheduler": space.scheduler, "search": space.search,
            "experiment": str(outcome.experiment_dir), "space": shown_path(space.source),
            "epochs": space.config.get("epochs"), "image_size": space.config.get("image_size")}
    return outcome, info


def champion(cfg: BenchConfig, space, outcome, split_csv, data_dir: Path, out_name: str = "champion") -> dict:
    """Exactly pipelines/tune.py's choice (imgrestore.tuning.polish.select_champion), kept in --work/`out_name`."""
    import ray

    from imgrestore.training.checkpoint import load_model
    from imgrestore.tuning.polish import select_champion

    out = cfg.work / out_name
    shutil.rmtree(out, ignore_errors=True)
    sel = select_champion(outcome, space, split_csv, out, data_dir, parallel=ray.is_initialized())
    if sel.folds_error:
        print(f"[benchmark] warning: the champion could not be scored on every fold ({sel.folds_error})", flush=True)
    classical_dir = str(sel.checkpoint) if sel.choice.kind == "classical" else None
    if sel.error:
        print(f"[benchmark] warning: {sel.error}", flush=True)
        return {"choice": sel.choice, "trial": None, "error": sel.error, "baselines": outcome.baselines,
                "classical_dir": classical_dir, "folds": sel.folds, "folds_error": sel.folds_error}
    polished, row = sel.polished, sel.best_epoch
    trial = {"id": row.get("trial_id"), "epoch": int(row["epoch"]), "config": sel.best.config,
             "dir": str(out / "trial"), "base_prefill": load_model(out / "trial").prefill_method,
             "prefill": polished.prefill, "decoding": polished.decoding, "score": polished.score,
             "scores": polished.scores, "polished_dir": str(polished.checkpoint)}
    return {"choice": sel.choice, "trial": trial, "baselines": outcome.baselines, "classical_dir": classical_dir,
            "folds": sel.folds, "folds_error": sel.folds_error}


def champion_model(champ: dict):
    from imgrestore.training.checkpoint import load_model

    choice = champ["choice"]
    return load_model(champ["trial"]["polished_dir"] if choice.kind == "trial" else champ["classical_dir"])


def champion_desc(champ: dict) -> dict:
    """The champion's model config: the trial's, with the prefill polish chose; or the classical family."""
    choice, trial = champ["choice"], champ["trial"]
    if choice.kind == "classical":
        return {"name": choice.name, "decoding": choice.decoding}
    return {**trial["config"]["model"], "prefill": trial["prefill"], "decoding": trial.get("decoding", "none")}


# -- ablations and the seed's recipe --------------------------------------------------------------------------
def side_runs(cfg: BenchConfig, data_dir: Path, pre, champ: dict, space) -> dict:
    """Each ingredient of the best trial's config switched off, and the seed's recipe on a KFold split: same
    epochs as the best trial's config, one 1-CPU Ray task each, side by side."""
    from imgrestore.training.loop import DEFAULTS
    from imgrestore.tuning.baselines import validation_config

    common = {"data_dir": str(data_dir), "preproc_csv": pre.paths["train_csv"], "n_samples_grid": 0}
    trial = champ["trial"]
    base = {**{k: v for k, v in copy.deepcopy(trial["config"]).items() if k in DEFAULTS}, **common} if trial else {}
    epochs = base.get("epochs", space.config["epochs"])
    kfold_csv = quality.kfold_split_csv(Path(pre.paths["train_csv"]), data_dir / "train_preproc_kfold.csv",
                                        int(pre.summary["n_folds"]))
    width = {"base_channels": cfg.seed_channels, "depth": 2 if cfg.quick else quality.SEED_MODEL["depth"]}
    # the seed's recipe first: the slowest run (full-size network), so it does not start last and run alone
    jobs = {SEED: {**common, "preproc_csv": str(kfold_csv), "image_size": cfg.size, "epochs": epochs, "val_fold": 0,
                   "batch_size": space.config.get("batch_size", DEFAULTS["batch_size"]),
                   "max_val_images": validation_config(space.config)["max_val_images"], "seed": cfg.seed,
                   "model": {**quality.SEED_MODEL, **width}, "loss": dict(quality.SEED_LOSS), "lr": 1e-3,
                   "calibrate_gain": False}}
    changed = {SEED: "two_stage_unet, L1 + MSE, prefill none, no gain calibration, KFold validation"}
    for label, (what, config) in quality.ablation_configs(base).items() if trial else ():
        jobs[label], changed[label] = config, what
    shutil.rmtree(cfg.work / "side_runs", ignore_errors=True)
    out = quality.train_runs(jobs, cfg.work / "side_runs")
    for name, res in out.items():
        res.update(config=jobs[name], changed=changed[name],
                   overlap=quality.photo_overlap(Path(jobs[name]["preproc_csv"]), data_dir / "sources.csv"))
    return out


# -- the held-out test set ---------------------------------------------------------------------------------------
def score_all(test, prior, champ: dict, side: dict, pre, data_dir: Path, hue_prior=None) -> tuple[dict, dict]:
    """(main rows, ablation rows): per-image test scores of every method, with its validation figures.
    `hue_prior`: the search's (fitted on its training fold) when the space has ``hue_prior``: the classical
    restorers are then also scored decoded, as the search scored them."""
    from imgrestore.training.checkpoint import load_model
    from imgrestore.tuning.baselines import label

    group = {"val_split": "cluster-group fold",
             "overlap": quality.photo_overlap(Path(pre.paths["train_csv"]), data_dir / "sources.csv")}
    val = {label(r["name"], r.get("decoding")): r for r in champ["baselines"].to_dict("records")}
    rows = {}
    for name, fn in quality.classical_predictors(hue_prior).items():
        rows[f"classical: {name}"] = {"frame": quality.score_method(test, fn), "kind": "classical", "family": name,
                                      "val_score": val.get(name, {}).get("score"), "model": {"name": name}, **group}
    for name, fn in quality.prior_predictors(prior).items():
        rows[name] = {"frame": quality.score_method(test, fn), "kind": "prior"}

    def trained(res: dict) -> dict:
        frame = quality.score_method(test, quality.model_predictor(load_model(res["checkpoint"])))
        return {"frame": frame, "val_score": res["best"]["score"], "best_epoch": int(res["best"]["epoch"]),
                "epochs": len(res["rows"]), "train_s": res["wall_s"], "model": res["config"]["model"],
                "changed": res["changed"], "overlap": res["overlap"]}

    rows[SEED] = {**trained(side[SEED]), "kind": "seed", "val_split": "KFold (images)"}
    choice, trial = champ["choice"], champ["trial"]
    rows[CHAMPION] = {"frame": quality.score_method(test, quality.model_predictor(champion_model(champ))),
                      "kind": "champion", "val_score": choice.score, "model": champion_desc(champ), **group,
                      "best_epoch": trial["epoch"] if choice.kind == "trial" else None}
    ablations = {}
    if trial is None:
        return rows, ablations
    if choice.kind == "classical":  # the best trial still shows how far the learned models got
        rows[BEST_TRIAL] = {"frame": quality.score_method(test, quality.model_predictor(load_model(
            trial["polished_dir"]))), "kind": "trial", "val_score": trial["score"], "best_epoch": trial["epoch"],
            "model": {**trial["config"]["model"], "prefill": trial["prefill"],
                      "decoding": trial.get("decoding", "none")}, **group}  # as polished
    polished = rows[CHAMPION if choice.kind == "trial" else BEST_TRIAL]
    # the polish row: prefill and (hue_prior) decoding chosen on validation; the ablations below and their
    # reference are all undecoded, so their differences are the training ingredients' alone
    ablations[f"polish: best trial, {label(trial['prefill'], trial.get('decoding'))} chosen on validation"] = {
        **polished, "changed": f"polish: {', '.join(f'{k} {v:.4f}' for k, v in trial['scores'].items())} on val"}
    ablations[UNPOLISHED] = {
        "frame": quality.score_method(test, quality.model_predictor(load_model(trial["dir"]))),
        "val_score": trial["scores"][trial["base_prefill"]], "best_epoch": trial["epoch"],
        "changed": f"{trial['base_prefill']} prefill at inference, as trained", "reference": True}
    for name, res in side.items():
        if name != SEED:
            ablations[name] = trained(res)
    return rows, ablations


def submission_check(model, test, data_dir: Path, out: Path) -> dict:
    """The champion through the real path: `write_submission` (checked zip), then `score_directory`."""
    import ray

    from imgrestore.metrics import score_directory
    from imgrestore.submission.predict import write_submission

    frame = pd.DataFrame({"name": [im.name for im in test],
                          "input_path": [str(data_dir / "test_input" / im.name) for im in test]})
    zip_path = write_submission(model, frame, out, progress=False, parallel=ray.is_initialized())
    _, summary = score_directory(zip_path, data_dir / "test_input", data_dir / "test_gt")
    return summary


def inference_models(space, champ: dict, side: dict) -> dict:
    """The trained champion and seed, each family of the space untrained (speed does not depend on weights),
    and the two classical fills a model may use (Telea, FSR)."""
    from imgrestore.models import create_model
    from imgrestore.training.checkpoint import load_model
    from imgrestore.tuning.space import corner_configs

    models = {f"champion: {model_desc(champion_desc(champ))}": champion_model(champ),
              "seed recipe (trained)": load_model(side[SEED]["checkpoint"])}
    families = {}
    for corner in corner_configs(space.config["model"]):  # concrete configs touching every choice
        families.setdefault(corner["name"], corner)
    for name, corner in families.items():
        kwargs = {k: v for k, v in corner.items() if k != "name"}
        if name == "effnet_unet":
            kwargs["pretrained"] = False
        models[f"{model_desc(corner)} (untrained)"] = create_model(name, **kwargs)
    for name in ("telea", "fsr"):
        models[f"classical: {name}"] = create_model(name)
    return models


def run_benchmark(cfg: BenchConfig) -> BenchResult:
    import ray

    from imgrestore.embedding.cache import load_embeddings
    from imgrestore.preprocess import run_preprocess
    from imgrestore.tuning import decoding

    cfg.work.mkdir(parents=True, exist_ok=True)
    machine, stages = machine_info(), Stages()
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        data_dir, dataset = stages.run("dataset build", build_data, cfg, note="cached between runs")
        if dataset["reused"]:
            stages.rows[-1]["note"] = "reused from an earlier run"
        pre = stages.run("preprocess (embed + UMAP/HDBSCAN + folds)", run_preprocess, data_dir, log_mlflow=False)
        if pre.reused:
            stages.rows[-1]["note"] = "outputs up to date: reused"
        test = quality.load_test_set(data_dir, Path(pre.paths["test_csv"]))
        train_frame = pd.read_csv(pre.paths["train_csv"]).assign(
            gt_path=lambda f: [str(data_dir / p) for p in f["gt_img_path"]])
        prior = quality.ChromaPrior(train_frame)
        space, changes = bench_space(cfg, pre.paths["train_csv"])
        outcome, search_info = stages.run(f"Tune search ({space.num_samples} trials, classical restorers first)",
                                          search, cfg, space, data_dir)
        search_info["changes"] = changes
        champ = stages.run("champion (polish the prefill, pick vs classical)", champion, cfg, space, outcome,
                           pre.paths["train_csv"], data_dir)
        side = stages.run("ablations + seed recipe (1-CPU Ray tasks)", side_runs, cfg, data_dir, pre, champ, space)
        hue_prior = decoding.fit_prior(train_frame[train_frame["fold"] != int(space.config.get("val_fold", 0))]) \
            if space.config.get("hue_prior") else None
        scores, ablations = stages.run("restore + score the test set (every method)", score_all, test, prior,
                                       champ, side, pre, data_dir, hue_prior)
        champ["submission"] = submission_check(champion_model(champ), test, data_dir,
                                               cfg.work / "champion_submission.zip")
        images = throughput.inference_images([im.gt for im in test], cfg.infer_images, cfg.infer_size, cfg.seed)
        try:
            demo = stages.run("make demo's search and champion (embedded dataset)", demo_stage.run_demo, cfg, test,
                              data_dir, photo_sources(cfg.photos)[0])
        except Exception as e:  # hours into the run: the rest of the result is kept, the failure said in the docs
            print(f"[benchmark] warning: the demo stage failed: {type(e).__name__}: {e}", flush=True)
            demo = {"failed": f"{type(e).__name__}: {e}"}
        inference = stages.run(f"inference at {cfg.infer_size} px", throughput.bench_inference,
                               inference_models(space, champ, side), images)
        ds = pd.read_csv(data_dir / "train.csv")
        paths = [str(data_dir / p) for p in ds["gt_img_path"]] + \
                [str(data_dir / "test_input" / im.name) for im in test]
        embedding = stages.run("embedding throughput", throughput.bench_embedding, paths,
                               marginal_run=not cfg.quick)
        dim = len(load_embeddings(pre.paths["train_embeddings"])["embedding"].iloc[0])  # the real embedder's
        warm, cl_rows = stages.run("UMAP + HDBSCAN sizes (subprocess)", throughput.bench_clustering,
                                   list(cfg.cluster_sizes), dim, cfg.cluster_timeout)
    finally:
        if started_ray:
            ray.shutdown()
    counts = {str(int(c)): int(n) for c, n in train_frame["cluster"].value_counts().items()}
    return BenchResult(cfg, machine, dataset, {**pre.summary, "reused": pre.reused, "train_cluster_counts": counts},
                       scores, ablations, champ, throughput.trial_rows(outcome.results), search_info,
                       inference, embedding, {"warmup_s": warm, "rows": cl_rows, "dim": dim}, stages.rows,
                       load_end=load_average(), demo=demo)
