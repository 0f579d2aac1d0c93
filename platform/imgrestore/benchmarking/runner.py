"""The whole benchmark, stage by stage; `run_benchmark(cfg)` returns everything `render` needs.

Stages: build (or reuse) a DACON dataset from photos -> preprocess (embeddings, scene clusters, group folds)
-> baselines on the held-out test set -> the demo search (Ray Tune) and its champion -> the seed's recipe on a
KFold and on the group split, and the champion's config at a larger budget (1-CPU Ray tasks side by side)
-> scoring every model on the test set -> 512 px inference -> embedding throughput -> UMAP / HDBSCAN sizes.
"""
from __future__ import annotations

import copy
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from imgrestore.benchmarking import quality, throughput
from imgrestore.benchmarking.report import Stages, load_average, machine_info

ROOT = Path(__file__).resolve().parents[3]  # the repository (platform/imgrestore/benchmarking/runner.py)


@dataclass
class BenchConfig:
    photos: str                       # a folder of colour photos, or "bundled"
    work: Path                        # datasets, Tune storage, MLflow store, checkpoints
    size: int = 128
    n_train: int = 200
    n_test: int = 64
    budget_epochs: int = 4
    large_budget_epochs: int = 8
    search_samples: int = 4
    seed_channels: int = 8
    space: Path = ROOT / "search_spaces" / "demo.yaml"
    cluster_sizes: tuple = (1000, 5000, 30000)
    cluster_timeout: float = 300.0
    infer_images: int = 4
    infer_size: int = 512
    quick: bool = False
    seed: int = 0
    command: str = ""

    @classmethod
    def quick_preset(cls, **kw) -> "BenchConfig":
        base = dict(size=64, n_train=30, n_test=6, budget_epochs=1, large_budget_epochs=2, search_samples=2,
                    seed_channels=4, cluster_sizes=(200, 400), cluster_timeout=120.0, infer_images=2,
                    infer_size=128, quick=True)
        return cls(**{**base, **kw})


@dataclass
class BenchResult:
    cfg: BenchConfig
    machine: dict
    dataset: dict
    preprocess: dict
    quality: dict                      # method -> {"frame": per-image scores, "val_score", "val_split", ...}
    trials: list
    search: dict
    inference: list
    embedding: list
    clustering: dict
    stages: list
    load_end: str = ""
    notes: list = field(default_factory=list)


# -- stages ---------------------------------------------------------------------------------------------------
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


def demo_space(cfg: BenchConfig, preproc_csv: str):
    """The demo search space at the benchmark's budget (epochs, samples, image size)."""
    from imgrestore.tuning.space import load_space

    space = load_space(cfg.space)
    space.name = f"{space.name}-benchmark"
    space.num_samples = cfg.search_samples
    space.config = {**space.config, "image_size": cfg.size, "epochs": cfg.budget_epochs, "preproc_csv": preproc_csv}
    sched = dict(space.scheduler or {})
    if sched.get("name") == "asha":
        sched["grace_period"] = max(1, min(int(sched.get("grace_period", 1)), cfg.budget_epochs // 2))
        if cfg.budget_epochs < 2:
            sched = {"name": "fifo"}
    space.scheduler = sched or {"name": "fifo"}
    if cfg.quick:  # tiny networks: the quick run checks the machinery, not the quality
        space.config["model"] = {**space.config["model"], "base_channels": 4, "depth": 2}
        space.config.update(batch_size=4, max_val_images=8)
    return space


def model_width(space) -> dict:
    """Base channels / depth for the 512 px inference models: the space's widest choice."""
    model = space.config["model"]
    ch = model.get("base_channels", 16)
    ch = max(ch["choice"]) if isinstance(ch, dict) else ch
    return {"base_channels": int(ch), "depth": int(model.get("depth", 3))}


def search(cfg: BenchConfig, space, data_dir: Path) -> tuple[object, dict]:
    from imgrestore.tracking import setup_tracking
    from imgrestore.training.checkpoint import load_model
    from imgrestore.tuning.search import best_checkpoint, run_search

    uri = setup_tracking(f"sqlite:///{(cfg.work / 'mlflow.db').resolve()}")
    t0 = time.perf_counter()
    outcome = run_search(space, data_dir, cfg.work / "runs", uri, seed=cfg.seed, verbose=0)
    wall = time.perf_counter() - t0
    best, ckpt, row = best_checkpoint(outcome.results, space.metric, space.mode)
    with ckpt.as_directory() as d:
        model = load_model(d)
    info = {"wall_s": wall, "slots": int(space.max_concurrent_trials or 1), "config": best.config,
            "val_score": float(row["score"]), "epoch": int(row["epoch"]), "experiment": str(outcome.experiment_dir),
            "n_trials": len(outcome.results), "scheduler": space.scheduler, "search": space.search}
    return outcome.results, {**info, "model": model}


def side_runs(cfg: BenchConfig, data_dir: Path, pre, best_config: dict, space) -> dict:
    """The seed's recipe on a KFold and on the group split, and the champion's config for longer."""
    from imgrestore.training.loop import DEFAULTS

    kfold_csv = quality.kfold_split_csv(Path(pre.paths["train_csv"]), data_dir / "train_preproc_kfold.csv",
                                        int(pre.summary["n_folds"]))
    common = {"data_dir": str(data_dir), "image_size": cfg.size, "epochs": cfg.budget_epochs, "val_fold": 0,
              "batch_size": space.config.get("batch_size", DEFAULTS["batch_size"]), "max_val_images": 100_000,
              "seed": cfg.seed}
    width = {"base_channels": cfg.seed_channels, "depth": 2 if cfg.quick else quality.SEED_MODEL["depth"]}
    seed = {**common, "model": {**quality.SEED_MODEL, **width}, "loss": dict(quality.SEED_LOSS), "lr": 1e-3}
    large = {**{k: v for k, v in copy.deepcopy(best_config).items() if k in DEFAULTS}, **common,
             "epochs": cfg.large_budget_epochs, "preproc_csv": pre.paths["train_csv"]}
    jobs = {"champion config, larger budget": large,
            "seed recipe, KFold validation": {**seed, "preproc_csv": str(kfold_csv)},
            "seed recipe, group-fold validation": {**seed, "preproc_csv": pre.paths["train_csv"]}}
    out = quality.train_runs(jobs, cfg.work / "side_runs")
    for name, res in out.items():
        res["config"] = jobs[name]
        res["val_split"] = "KFold (images)" if "KFold" in name else "cluster-group fold"
        res["overlap"] = quality.photo_overlap(Path(jobs[name]["preproc_csv"]), data_dir / "sources.csv")
    return out


def score_all(test, prior, search_info, side, pre, data_dir: Path) -> dict:
    from imgrestore.training.checkpoint import load_model

    group_overlap = quality.photo_overlap(Path(pre.paths["train_csv"]), data_dir / "sources.csv")
    out = {name: {"frame": quality.score_method(test, fn), "kind": "baseline"}
           for name, fn in quality.baselines(prior).items()}
    for name in ("seed recipe, KFold validation", "seed recipe, group-fold validation"):
        res = side[name]
        out[name] = {"frame": quality.score_method(test, quality.model_predictor(load_model(res["checkpoint"]))),
                     "kind": "model", "val_score": res["rows"][-1]["score"], "val_split": res["val_split"],
                     "overlap": res["overlap"], "train_s": res["wall_s"], "epochs": len(res["rows"]),
                     "model": res["config"]["model"]}
    out["platform champion (demo search)"] = {
        "frame": quality.score_method(test, quality.model_predictor(search_info["model"])), "kind": "model",
        "val_score": search_info["val_score"], "val_split": "cluster-group fold", "overlap": group_overlap,
        "train_s": None, "epochs": search_info["epoch"], "model": search_info["config"]["model"]}
    res = side["champion config, larger budget"]
    out["champion config, larger budget"] = {
        "frame": quality.score_method(test, quality.model_predictor(load_model(res["checkpoint"]))), "kind": "model",
        "val_score": res["rows"][-1]["score"], "val_split": res["val_split"], "overlap": res["overlap"],
        "train_s": res["wall_s"], "epochs": len(res["rows"]), "model": res["config"]["model"]}
    return out


def submission_check(model, test, data_dir: Path, out: Path) -> dict:
    """The champion through the real path: `write_submission` (checked zip), then `score_directory`."""
    from imgrestore.metrics import score_directory
    from imgrestore.submission.predict import write_submission

    frame = pd.DataFrame({"name": [im.name for im in test],
                          "input_path": [str(data_dir / "test_input" / im.name) for im in test]})
    zip_path = write_submission(model, frame, out, progress=False)
    _, summary = score_directory(zip_path, data_dir / "test_input", data_dir / "test_gt")
    return summary


def inference_models(cfg: BenchConfig, space, search_info, side) -> dict:
    from imgrestore.models import create_model
    from imgrestore.training.checkpoint import load_model

    width = model_width(space)
    models = {f"champion: {search_info['config']['model']['name']} (trained)": search_info["model"],
              "seed recipe (trained)": load_model(side["seed recipe, KFold validation"]["checkpoint"])}
    names = space.config["model"]["name"]
    for name in (names["choice"] if isinstance(names, dict) else [names]):
        extra = {"pretrained": False} if name == "effnet_unet" else {}
        label = f"{name} {width['base_channels']} ch, depth {width['depth']} (untrained)"
        models[label] = create_model(name, **width, **extra)
    return models


def run_benchmark(cfg: BenchConfig) -> BenchResult:
    import ray

    from imgrestore.embedding.cache import load_embeddings
    from imgrestore.preprocess import run_preprocess

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
        space = demo_space(cfg, pre.paths["train_csv"])
        results, search_info = stages.run(f"Tune search ({cfg.search_samples} trials)", search, cfg, space, data_dir)
        side = stages.run("seed recipe x2 + larger budget (Ray tasks)", side_runs, cfg, data_dir, pre,
                          search_info["config"], space)
        scores = stages.run("restore + score the test set (all methods)", score_all, test, prior, search_info,
                            side, pre, data_dir)
        search_info["submission"] = submission_check(search_info["model"], test, data_dir,
                                                     cfg.work / "champion_submission.zip")
        gts = [im.gt for im in test]
        images = throughput.inference_images(gts, cfg.infer_images, cfg.infer_size, cfg.seed)
        inference = stages.run(f"inference at {cfg.infer_size} px", throughput.bench_inference,
                               inference_models(cfg, space, search_info, side), images)
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
                       scores,
                       throughput.trial_rows(results), {k: v for k, v in search_info.items() if k != "model"},
                       inference, embedding, {"warmup_s": warm, "rows": cl_rows, "dim": dim}, stages.rows,
                       load_end=load_average())
