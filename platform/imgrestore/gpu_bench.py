"""Measurements behind `python pipelines/doctor.py --bench`: what this node's GPU (or CPU) does with each stage.

Every function returns rows ``{"name", "result", "note", "gpu"}`` (``gpu``: True when the figure was measured on
a GPU) and never raises for a missing library: its rows say "not installed here" (or "no GPU here") instead.
Libraries are imported inside the functions, so a node with torch alone can run this module.

    bench_clustering   cuML vs umap-learn + hdbscan (SceneClusterer, the preprocess parameters) on synthetic,
                       well-separated clusters: time, ARI against the truth and between the two backends
    bench_embedding    the StreetCLIP architecture (ViT-L/14, 336 px; random weights, nothing downloaded)
                       through Ray Data vs a plain loop
    bench_embedding_sweep   the same model alone on a GPU: batch sizes, bf16 vs fp32
    bench_metric       the torch metric (imgrestore.torch_metrics) vs imgrestore.metrics, per 512 px image
    bench_training_throughput   training images/s and peak GPU memory of every search_spaces/dacon.yaml model
                       configuration at 512 px, bf16 (the training autocast) and fp32, flagged over 24 GiB
    bench_data_wait    the share of a training step blocked on the DataLoader (a dacon.yaml trial's workers, pinned)
    bench_validation_epoch   one epoch's validation as training runs it (training.evaluate: the torch metric on
                       a GPU) against the CPU metric, and its share of a DACON-sized epoch
    bench_two_trial_search   preprocess + a two-trial Ray Tune search with MLflow on this node, wall time
The last four use the project's training code on a synthetic 512 px DACON-format set; without --quick they
measure on a GPU only (--quick: tiny, and on the CPU too, fp32).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

NOT_INSTALLED = "not installed here"
NO_GPU = "no GPU here"


def row(name: str, result: str, note: str = "", gpu: bool = False) -> dict:
    return {"name": name, "result": result, "note": note, "gpu": gpu}


def missing(e: BaseException) -> str:
    """'not installed here (No module named x)' for an import error, else the error in one line."""
    if isinstance(e, ImportError):
        return f"{NOT_INSTALLED} ({e})"
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- (a) clustering


def separated_clusters(n: int, d: int, k: int, seed: int = 0):
    """n unit vectors in k tight Gaussian clusters (equal sizes) in d dimensions, and their true labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    centers = rng.normal(size=(k, d))
    X = centers[labels] + rng.normal(scale=0.3, size=(n, d))  # spread ~0.3 sqrt(d), centres ~sqrt(2d) apart
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), labels


def bench_clustering(quick: bool = False) -> list[dict]:
    n, d, k = (1000, 32, 10) if quick else (30000, 768, 300)
    shape = f"{n} x {d}, {k} clusters"
    names = {"cpu": "UMAP + HDBSCAN, cpu (umap-learn + hdbscan)", "cuml": "UMAP + HDBSCAN, cuml (RAPIDS)"}
    try:
        from sklearn.metrics import adjusted_rand_score

        from imgrestore.clustering.scene_clusters import SceneClusterer, cuml_available
    except Exception as e:
        return [row(names["cpu"], missing(e)), row(names["cuml"], missing(e)), row("ARI cuml vs cpu", "-")]
    X, truth = separated_clusters(n, d, k)
    labels, rows = {}, []
    for backend in ("cpu", "cuml"):
        if backend == "cuml":
            ok, why = cuml_available()
            if not ok:
                rows.append(row(names[backend], NO_GPU if "imports but" in why else f"{NOT_INSTALLED} ({why})"))
                continue
        try:
            t = time.perf_counter()
            # first fit: numba JIT (CPU) or CUDA context and kernels (cuML), paid once per process
            SceneClusterer(backend=backend).fit(separated_clusters(300, d, 6, seed=1)[0])
            warm = time.perf_counter() - t
            t = time.perf_counter()
            sc = SceneClusterer(backend=backend).fit(X)
            seconds = time.perf_counter() - t
        except Exception as e:
            rows.append(row(names[backend], missing(e)))
            continue
        labels[backend] = sc.labels_
        n_clusters = len(set(sc.labels_.tolist()) - {-1})
        rows.append(row(names[backend], f"{seconds:.1f} s", f"{shape}; {n_clusters} found, "
                        f"{(sc.labels_ < 0).mean():.0%} noise, ARI vs truth {adjusted_rand_score(truth, sc.labels_):.3f};"
                        f" warm-up {warm:.0f} s excluded", gpu=backend == "cuml"))
    if len(labels) == 2:
        rows.append(row("ARI cuml vs cpu", f"{adjusted_rand_score(labels['cpu'], labels['cuml']):.3f}",
                        "same parameters; labels can differ in tie-breaking", gpu=True))
    else:
        rows.append(row("ARI cuml vs cpu", "-", "needs both backends"))
    return rows


# ----------------------------------------------------------------------------- (b) embedding


def _photos(n: int, size: int = 512, seed: int = 0):
    """n RGB uint8 size x size images: crops of the bundled photos, or smooth noise if they are unavailable."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        try:
            from imgrestore.data.embedded import demo_photo

            photo = demo_photo(i % 20)
        except Exception:
            photo = np.asarray(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((64, 64)))
        out.append(np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC)))
    return out


def bench_embedding(quick: bool = False) -> list[dict]:
    gpu = cuda_available()
    arch = "tiny" if quick else "streetclip"
    n = (64 if quick else 1024) if gpu else (16 if quick else 8)
    what = f"{'ViT-L/14 336 px (StreetCLIP architecture)' if arch == 'streetclip' else 'tiny ViT, 336 px'}, " \
           f"random weights, {n} PNGs of 512 px"
    names = ("embedding, plain loop", "embedding, Ray Data")
    try:
        from PIL import Image

        from imgrestore.embedding.embedders import random_clip_embedder
        from imgrestore.embedding.ray_embed import CPU_BATCH, GPU_BATCH, embed_images_local
    except Exception as e:
        return [row(names[0], missing(e)), row(names[1], missing(e))]
    batch = GPU_BATCH if gpu else CPU_BATCH
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, im in enumerate(_photos(n)):
            paths.append(os.path.join(tmp, f"img_{i:04d}.png"))
            Image.fromarray(im).save(paths[-1])
        emb = random_clip_embedder(arch)
        embed_images_local(paths[:2], embedder=emb)  # warm-up: allocations, kernel choice
        _sync()
        t = time.perf_counter()
        local = embed_images_local(paths, embedder=emb, batch_size=batch)
        _sync()
        loop_s = time.perf_counter() - t
        rows.append(row(names[0], f"{n / loop_s:.1f} images/s", f"{what}; batch {batch}, {emb.device}, "
                        f"{str(emb.dtype).replace('torch.', '')}; decode + resize + model in one process", gpu=gpu))
        del emb
        # Ray Data gets the target's size (DACON_TRAIN_PAIRS files: the PNGs above again, as hard links), so that
        # decoding has to keep pace with the GPU for most of the run instead of finishing while the actor starts
        total = DACON_TRAIN_PAIRS if gpu and not quick else n
        ray_paths = paths + [_link(paths[i % n], tmp, i) for i in range(n, total)]
        rows.append(_ray_row(names[1], ray_paths, arch, local, what, gpu))
    return rows


def bench_embedding_sweep(quick: bool = False) -> list[dict]:
    """The embedding model alone on the GPU: images/s and peak memory per batch size, bf16/fp16 and fp32."""
    name = "embedding batch sweep (GPU)"
    if not cuda_available():
        return [row(name, NO_GPU)]
    try:
        import numpy as np
        import torch

        return [_batch_sweep(name, "tiny" if quick else "streetclip", torch, np)]
    except Exception as e:
        return [row(name, missing(e))]


def _link(path: str, folder: str, i: int) -> str:
    """Another name for the file at `path` (a hard link, a copy where links are not allowed)."""
    new = os.path.join(folder, f"again_{i:05d}.png")
    try:
        os.link(path, new)
    except OSError:
        shutil.copyfile(path, new)
    return new


def _ray_row(name, paths, arch, local, what, gpu) -> dict:
    try:
        import numpy as np
        import ray

        from imgrestore.embedding.embedders import random_clip_embedder
        from imgrestore.embedding.ray_embed import ray_embed_paths
    except Exception as e:
        return row(name, missing(e))
    factory = functools.partial(random_clip_embedder, arch)
    preparer = random_clip_embedder("tiny", device="cpu").preparer  # the same CLIP preprocessing, no big weights
    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # this node only, never a cluster
    try:
        t = time.perf_counter()
        vecs, plan = ray_embed_paths(paths, factory=factory, preparer=preparer)
        seconds = time.perf_counter() - t
    except Exception as e:
        return row(name, missing(e))
    finally:
        ray.shutdown()
    n = len(paths)
    # path i is the loop's file i % len(local), under another name past the first len(local): it must embed alike
    diff = float(np.abs(np.stack([vecs[p] for p in paths]) - local[np.arange(n) % len(local)]).max())
    if n > len(local):
        what = f"{what}, embedded {n} times in all (the same PNGs under {n - len(local)} more names)"
    # the rate after the first embeddings come out is what a 30k-image set sees (its start is paid once)
    steady = plan["steady_images_per_s"]
    result = f"{steady:.1f} images/s after the first batch" if steady == steady else \
        f"{n / seconds:.1f} images/s end to end (one batch: no rate after the first)"
    return row(name, result,
               f"{what}; {plan['size']} actor(s) x {plan['num_gpus']} GPU, {plan['num_cpus']} CPU, batch "
               f"{plan['batch_size']}, decode tasks of {plan['decode_batch']} (1 CPU each); first embeddings after "
               f"{plan['first_batch_s']:.1f} s (Ray Data start, the actor's model build), end to end {n / seconds:.1f} "
               f"images/s for these {n}; max abs diff vs loop {diff:.1e}", gpu=gpu)


def _batch_sweep(name, arch, torch, np) -> dict:
    """Model-only images/s and peak memory per batch size (bf16/fp16 by default, and fp32 at 128)."""
    from imgrestore.embedding.embedders import random_clip_embedder

    parts = []
    for dtype, sizes in (("auto", (32, 64, 128, 256)), ("fp32", (128,))):
        emb = random_clip_embedder(arch, dtype=dtype)
        for bs in sizes:
            pixels = np.random.default_rng(0).integers(0, 256, (bs, 3, 336, 336), dtype=np.uint8)
            try:
                emb.micro_batch = bs
                emb.embed_prepared(pixels)  # warm-up
                torch.cuda.reset_peak_memory_stats()
                _sync()
                t = time.perf_counter()
                for _ in range(3):
                    emb.embed_prepared(pixels)
                _sync()
                rate = 3 * bs / (time.perf_counter() - t)
                peak = torch.cuda.max_memory_allocated() / 2**30
                parts.append(f"{str(emb.dtype).replace('torch.', '')} b{bs}: {rate:.0f}/s {peak:.1f} GiB")
            except torch.cuda.OutOfMemoryError:
                parts.append(f"b{bs}: out of memory")
        del emb
        torch.cuda.empty_cache()
    return row(name, "; ".join(parts), "model only (uint8 batch already in host memory), 3 passes each", gpu=True)


# ----------------------------------------------------------------------------- (c) the validation metric


def bench_metric(quick: bool = False) -> list[dict]:
    bsz = 2 if quick else 16
    names = ("metric, imgrestore.metrics (CPU)", "metric, torch float64 on CPU", "metric, torch on GPU")
    try:
        import numpy as np
        import torch

        from imgrestore.torch_metrics import from_numpy_images, score_batch_torch
    except Exception as e:
        return [row(names[0], missing(e)), row(names[1], missing(e)), row(names[2], missing(e))]
    images = _photos(bsz, seed=1)
    rng = np.random.default_rng(0)
    preds = [np.clip(im.astype(int) + rng.integers(-20, 21, im.shape), 0, 255).astype(np.uint8) for im in images]
    try:
        from imgrestore.data.damage import apply_damage

        masks = [apply_damage(im, rng).mask for im in images]
    except Exception:  # scipy missing: a rectangle
        masks = [np.zeros(im.shape[:2], bool) for im in images]
        for m in masks:
            m[100:220, 150:300] = True
    gt_t, pred_t, mask_t = from_numpy_images(images), from_numpy_images(preds), torch.from_numpy(np.stack(masks))
    rows, ref = [], None
    try:
        from imgrestore.metrics import score_image

        t = time.perf_counter()
        ref = np.array([score_image(g, p, m)["score"] for g, p, m in zip(images, preds, masks)])
        rows.append(row(names[0], f"{(time.perf_counter() - t) / bsz * 1000:.0f} ms/image",
                        f"{bsz} images of 512 px, one at a time (skimage + OpenCV)"))
    except Exception as e:
        rows.append(row(names[0], missing(e)))

    def timed(device, dtype) -> tuple[float, float | None]:
        g, p, m = gt_t.to(device), pred_t.to(device), mask_t.to(device)
        score_batch_torch(g[:1], p[:1], m[:1], dtype=dtype)  # warm-up
        best = float("inf")
        for _ in range(1 if quick else 3):
            _sync()
            t = time.perf_counter()
            out = score_batch_torch(g, p, m, dtype=dtype)["score"].cpu().numpy()
            _sync()
            best = min(best, time.perf_counter() - t)
        return best / bsz, None if ref is None else float(np.abs(out - ref).max())

    def text(diff) -> str:
        return "" if diff is None else f"; max abs diff of the score vs imgrestore.metrics {diff:.1e}"

    sec, diff = timed("cpu", torch.float64)
    rows.append(row(names[1], f"{sec * 1000:.0f} ms/image", f"batch of {bsz}, {torch.get_num_threads()} threads"
                    + text(diff)))
    if not cuda_available():
        rows.append(row(names[2], NO_GPU))
        return rows
    parts = []
    for dtype in (torch.float64, torch.float32):
        sec, diff = timed("cuda", dtype)
        parts.append(f"{str(dtype).replace('torch.', '')} {sec * 1000:.2f} ms/image" + text(diff))
    rows.append(row(names[2], "; ".join(parts), f"batch of {bsz}, {torch.cuda.get_device_name(0)}", gpu=True))
    return rows


# ----------------------------------------------------------------------------- (d)-(g) the training code
# What a trial of search_spaces/dacon.yaml costs on this node, through the project's own code paths: the models of
# imgrestore.models, the loss of imgrestore.losses, the autocast dtype of imgrestore.training.loop, the datasets of
# imgrestore.training.data, imgrestore.training.evaluate, imgrestore.preprocess and imgrestore.tuning.search. The
# images are a synthetic DACON-format set (imgrestore.data.build on the bundled photos), built once per process in
# a temporary folder. Without --quick these rows measure on a GPU only; --quick runs them tiny (64 px, a couple of
# steps, a few images) on whatever device there is, fp32 on a CPU, so that a CPU test exercises every path.

TRAIN_NAME = "training throughput / peak memory"
DATA_WAIT_NAME = "data-wait share"
VALIDATION_NAME = "validation time per epoch"
SEARCH_NAME = "two-trial search"
LIMIT_GIB = 24.0  # the question these rows answer: does every dacon.yaml trial fit on a 24 GB card?
DACON_YAML = Path(__file__).resolve().parents[2] / "search_spaces" / "dacon.yaml"
_DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "quniform", "qloguniform")  # as tuning.space
QUICK = {"size": 64, "batch_size": 2, "warmup": 1, "steps": 1, "val_images": 2, "search_val_images": 4}
FULL = {"warmup": 2, "steps": 5, "wait_steps": 20, "search_val_images": 16, "cpu_val_images": 24}
ADVISED_GPU_NODE_CPUS = 8  # dacon.yaml / docs/cluster.md: give trials 6-8 CPUs on H100-class nodes
DACON_TRAIN_PAIRS = 30000  # the competition's training set, roughly: what an epoch costs at 512 px
_SETS: dict = {}


def _is_dist(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _DISTRIBUTIONS


def _heaviest(value):
    """A searched value made constant at its most expensive: the highest number a distribution allows (every
    loss term on, at its largest weight; the most extra damage), the first option of a non-numeric choice."""
    if _is_dist(value):
        kind, args = next(iter(value.items()))
        if kind == "choice":
            numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
            return max(numbers) if len(numbers) == len(args) else list(args)[0]
        return int(args[1]) - 1 if kind == "randint" else float(args[1])
    if isinstance(value, dict):
        return {k: _heaviest(v) for k, v in value.items()}
    return value


def _dacon_space() -> tuple[dict, dict, str]:
    """search_spaces/dacon.yaml's trial config (distributions included), its per-trial resources, and how it
    was read."""
    try:
        from imgrestore.tuning.space import load_space
    except ImportError:  # load_space imports ray.tune: without ray, the same file read as plain YAML
        import yaml

        raw = yaml.safe_load(DACON_YAML.read_text())
        return raw["config"], raw.get("resources") or {}, "dacon.yaml read as YAML (no ray here)"
    space = load_space(DACON_YAML)
    return space.config, space.resources, "dacon.yaml via tuning.space.load_space"


def dacon_config() -> tuple[dict, str]:
    """search_spaces/dacon.yaml's trial config (distributions included) and how it was read."""
    config, _, how = _dacon_space()
    return config, how


def trial_cpus() -> int:
    """The CPUs a dacon.yaml trial asks Ray for (its `resources: {cpu: N}`)."""
    return int(_dacon_space()[1].get("cpu", 1))


def trial_workers(num_workers, cpus: int) -> int:
    """DataLoader workers of a dacon.yaml trial given `cpus`: its num_workers, "auto" resolved as inside the
    trial (its resources.cpu minus one), not from this process's CPUs."""
    from imgrestore.training.loop import loader_workers

    return max(0, cpus - 1) if num_workers == "auto" else loader_workers(num_workers)


def model_grid(config: dict) -> list[dict]:
    """Every combination of the model choices in `config` (family x width x depth x chroma head for dacon.yaml),
    as create_model configs; a non-choice distribution is taken at its most expensive."""
    axes = {k: (list(v["choice"]) if _is_dist(v) and "choice" in v else [_heaviest(v)])
            for k, v in config["model"].items()}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _families(grid: list[dict]) -> list[str]:
    return list(dict.fromkeys(m["name"] for m in grid))


def _size_key(m: dict) -> tuple:
    return int(m.get("base_channels", 0)), int(m.get("depth", 0))


def _smallest(grid: list[dict], family: str) -> dict:
    """The family's cheapest configuration (fewest channels, shallowest, regression head when there is one)."""
    return min((m for m in grid if m["name"] == family), key=lambda m: (_size_key(m), m.get("chroma") != "regression"))


def _one_per_family(grid: list[dict]) -> list[dict]:
    """--quick: each family's smallest configuration, the chroma heads taken in turn (both code paths run)."""
    heads = list(dict.fromkeys(m.get("chroma") for m in grid))
    out = []
    for i, family in enumerate(_families(grid)):
        mine = [m for m in grid if m["name"] == family]
        low = [m for m in mine if _size_key(m) == min(_size_key(x) for x in mine)]
        out.append(next((m for m in low if m.get("chroma") == heads[i % len(heads)]), low[0]))
    return out


def _label(m: dict) -> str:
    head = {"regression": "reg", "classification": "cls"}.get(m.get("chroma", "regression"), m.get("chroma"))
    return f"{head} w{m.get('base_channels', '?')} d{m.get('depth', '?')}"


def _dtype_name(dtype) -> str:
    return "fp32" if dtype is None else {"bfloat16": "bf16", "float16": "fp16"}.get(str(dtype).replace("torch.", ""),
                                                                                    str(dtype))


def _device_text(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def synthetic_set(quick: bool) -> tuple[Path, float]:
    """(folder, seconds to build) of the synthetic DACON-format set the training rows share: 512 px crops of the
    bundled photos with generated damage (64 px with --quick), built once per process in a temporary folder
    that is removed at exit."""
    if quick not in _SETS:
        from imgrestore.data.build import BuildConfig, build_dataset
        from imgrestore.data.embedded import bundled_photos

        cfg = BuildConfig(size=QUICK["size"], n_train=30, n_test=6, seed=1) if quick else \
            BuildConfig(size=512, n_train=416, n_test=32, seed=0)
        tmp = tempfile.mkdtemp(prefix="imgrestore-doctor-")
        atexit.register(shutil.rmtree, tmp, True)
        print(f"  building a synthetic {cfg.size} px DACON-format set ({cfg.n_train} train + {cfg.n_test} test) "
              "...", flush=True)
        t = time.perf_counter()
        root = build_dataset(bundled_photos(), Path(tmp) / f"synthetic-{cfg.size}px", cfg, progress=False)
        _SETS[quick] = (root, time.perf_counter() - t)
    return _SETS[quick]


def _train_frame(root: Path):
    """train.csv of a DACON folder as the frame RestorationDataset reads (name, input_path, gt_path)."""
    import pandas as pd

    f = pd.read_csv(root / "train.csv")
    return pd.DataFrame({"name": [Path(p).name for p in f["input_img_path"]],
                         "input_path": [str(root / p) for p in f["input_img_path"]],
                         "gt_path": [str(root / p) for p in f["gt_img_path"]]})


def _setting(quick: bool, config: dict) -> dict:
    """Image size and batch size: dacon.yaml's (512, 8), or the --quick ones."""
    if quick:
        return {"size": QUICK["size"], "batch_size": QUICK["batch_size"]}
    cfg = _heaviest(config)
    return {"size": int(cfg.get("image_size") or 512), "batch_size": int(cfg.get("batch_size", 8))}


class _Trainer:
    """One model with its loss, AdamW, learning-rate schedule and GradScaler, set up as
    imgrestore.training.loop.train sets them up (`cfg`: a full training config, loop.with_defaults)."""

    def __init__(self, model_cfg: dict, cfg: dict, device, amp: str, total_steps: int, class_weights=None):
        import torch

        from imgrestore.losses import build_loss
        from imgrestore.models import create_model
        from imgrestore.training.loop import autocast_dtype, lr_lambda

        self.cfg, self.device = cfg, device
        self.amp_dtype = autocast_dtype(amp, device)
        self.autocast = {"device_type": device.type, "dtype": self.amp_dtype or torch.float32,
                         "enabled": self.amp_dtype is not None}
        kwargs = dict(model_cfg)
        name = kwargs.pop("name")
        if name == "effnet_unet":
            kwargs["pretrained"] = False  # same architecture and cost; the ImageNet weights are not needed here
        self.model = create_model(name, **kwargs).to(device)
        self.model.train()
        self.loss_fn = build_loss(cfg["loss"])
        self.bins = getattr(self.model, "bins", None)
        self.class_weights = class_weights(self.bins) if self.bins is not None and class_weights else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(total_steps, cfg["warmup_frac"]))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

    def step(self, *batch) -> float:
        """One training step on a CPU batch (gray, mask, rgb[, filled]: see loop.train_loader), the training
        loop's own (imgrestore.training.loop.train_step), after the same copy to the device; returns the loss."""
        from imgrestore.training.data import batch_to_device
        from imgrestore.training.loop import train_step

        gray, mask, rgb, *filled = batch_to_device(batch, self.device)
        loss, parts = train_step(self.model, gray, mask, rgb, self.cfg, self.loss_fn, self.optimizer, self.scaler,
                                 self.scheduler, self.autocast, self.bins, self.class_weights,
                                 filled=filled[0] if filled else None)
        for v in parts.values():  # the loop reads every part back (float(v)) for its epoch means
            float(v)
        return loss.item()


def _training_parts(quick: bool):
    """What (d)-(f) share: dacon.yaml's config, its most expensive training config per model, the dataset."""
    from imgrestore.training.loop import chroma_class_weights, with_defaults

    config, how = dacon_config()
    setting = _setting(quick, config)
    base = _heaviest(config)

    def training_cfg(model_cfg: dict) -> dict:
        return with_defaults({**base, "model": model_cfg, "image_size": setting["size"],
                              "batch_size": setting["batch_size"]})

    root, build_s = synthetic_set(quick)
    frame = _train_frame(root)
    cache: dict = {}

    def class_weights(cfg: dict):
        """loop.train's chroma-class rebalancing weights (from 16 training truths: the values do not change
        the cost), for chroma="classification" with chroma_rebalance > 0, else None."""
        if not cfg["chroma_rebalance"]:
            return None

        def weights(bins):
            if bins.n not in cache:
                from imgrestore.training.data import RestorationDataset

                cache[bins.n] = chroma_class_weights(RestorationDataset(frame, setting["size"]), bins,
                                                     cfg["chroma_rebalance"], max_images=16)
            return cache[bins.n]

        return weights

    return config, how, setting, training_cfg, frame, class_weights, build_s


def _clear_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _time_training(model_cfg, cfg, device, amp, batches, warmup, steps, class_weights) -> dict:
    """images/s over `steps` timed steps after `warmup` ones (cycling over preloaded CPU batches: no data
    wait), and on a GPU the peak memory of the whole run (optimizer state included)."""
    import torch

    gpu = device.type == "cuda"
    _clear_gpu()
    trainer = _Trainer(model_cfg, cfg, device, amp, warmup + steps, class_weights)
    for i in range(warmup):
        trainer.step(*batches[i % len(batches)])
    _sync()
    t = time.perf_counter()
    for i in range(steps):
        trainer.step(*batches[(warmup + i) % len(batches)])
    _sync()
    sec = time.perf_counter() - t
    out = {"images_per_s": steps * batches[0][0].shape[0] / sec, "step_ms": 1000 * sec / steps,
           "dtype": _dtype_name(trainer.amp_dtype)}
    if gpu:
        out.update(peak=torch.cuda.max_memory_allocated() / 2**30, reserved=torch.cuda.max_memory_reserved() / 2**30)
    return out


def _batches_of(dataset, batch_size: int, n_batches: int, pin: bool, prefill: tuple | None = None) -> list:
    """Preloaded CPU batches; with `prefill` (method, radius) each carries its classical fill, as the training
    loader's batches do (loop.train_loader: the fill is computed in its workers, not in the step)."""
    import torch

    from imgrestore.models.prefill import CPU_PREFILLS, PrefillCollate

    out = []
    for b in range(n_batches):
        items = [dataset[(b * batch_size + j) % len(dataset)] for j in range(batch_size)]
        if prefill and prefill[0] in CPU_PREFILLS:
            batch = list(PrefillCollate(*prefill)(items))
        else:
            batch = [torch.stack(t) for t in zip(*items)]
        out.append([t.pin_memory() for t in batch] if pin else batch)
    return out


def _prefill_of(cfg: dict) -> tuple:
    """(method, radius) of a training config's model (the Restorer's defaults: telea, 5)."""
    return str(cfg["model"].get("prefill", "telea")), int(cfg["model"].get("prefill_radius", 5))


def _training_start(name: str, quick: bool):
    """What (d)-(f) start with: on a CPU without --quick, or without torch or the synthetic set, the row that
    says so (a list: return it); else (gpu, device, _training_parts(quick))."""
    gpu = cuda_available()
    if not gpu and not quick:
        return [row(name, NO_GPU, "on a CPU, --quick measures a tiny fp32 version")]
    try:
        import torch

        parts = _training_parts(quick)
    except Exception as e:
        return [row(name, missing(e))]
    return gpu, torch.device("cuda" if gpu else "cpu"), parts


def bench_training_throughput(quick: bool = False) -> list[dict]:
    """(d) Training images/s and peak GPU memory of every dacon.yaml model configuration (family x chroma head x
    width x depth) at 512 px, batch 8, in the autocast dtype training uses (bf16; fp16 where bf16 is not native)
    and in fp32, with dacon.yaml's most expensive loss; each flagged when its peak is over 24 GiB."""
    start = _training_start(TRAIN_NAME, quick)
    if isinstance(start, list):
        return start
    gpu, device, (config, how, setting, training_cfg, frame, class_weights, build_s) = start
    import torch

    from imgrestore.models.prefill import prefill
    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.loop import autocast_dtype

    check = f"{TRAIN_NAME}, {LIMIT_GIB:g} GiB check"
    grid = model_grid(config)
    measured = _one_per_family(grid) if quick else grid
    size, bs = setting["size"], setting["batch_size"]
    warmup, steps = (QUICK["warmup"], QUICK["steps"]) if quick else (FULL["warmup"], FULL["steps"])
    any_cfg = training_cfg(measured[0])
    dataset = RestorationDataset(frame, size, train=True, extra_damage=any_cfg["extra_damage"], flip=any_cfg["flip"],
                                 uint8=True)  # as the training loop's
    by_prefill = {_prefill_of(any_cfg): _batches_of(dataset, bs, 2, pin=gpu, prefill=_prefill_of(any_cfg))}
    batches = by_prefill[_prefill_of(any_cfg)]
    amps = ("auto", "fp32") if gpu else ("fp32",)
    cells: dict = {}
    peaks = []  # (dtype, peak GiB or inf for out of memory, reserved GiB, which configuration)
    for amp in amps:
        dtype = _dtype_name(autocast_dtype(amp, device))
        for m in measured:
            cfg = training_cfg(m)
            key = (m["name"], dtype)
            if _prefill_of(cfg) not in by_prefill:  # each model gets the fill it would compute itself
                by_prefill[_prefill_of(cfg)] = _batches_of(dataset, bs, 2, pin=gpu, prefill=_prefill_of(cfg))
            try:
                r = _time_training(m, cfg, device, amp, by_prefill[_prefill_of(cfg)], warmup, steps,
                                   class_weights(cfg))
            except torch.cuda.OutOfMemoryError:
                r = None
            except Exception as e:  # one configuration failing must not hide the others
                cells.setdefault(key, []).append(f"{_label(m)}: {missing(e)}")
                continue
            where = f"{m['name']} {_label(m)} b{bs}"
            if r is None:
                cells.setdefault(key, []).append(f"{_label(m)}: OUT OF MEMORY")
                peaks.append((dtype, float("inf"), float("inf"), where))
            elif gpu:
                flag = f" OVER {LIMIT_GIB:g} GiB" if r["peak"] > LIMIT_GIB else ""
                cells.setdefault(key, []).append(f"{_label(m)}: {r['images_per_s']:.1f} img/s, {r['peak']:.1f} GiB"
                                                 + flag)
                peaks.append((dtype, r["peak"], r["reserved"], where))
            else:
                cells.setdefault(key, []).append(f"{_label(m)}: {r['images_per_s']:.1f} img/s")
        _clear_gpu()
    what = f"{_device_text(device)}, {size} px, batch {bs}"
    legend = "reg/cls: chroma head (regression/classification), w: base_channels, d: depth"
    rows = [row(f"{TRAIN_NAME}, {family}, {dtype}", "; ".join(parts),
                f"{what}, {dtype}; {legend}" + ("; peak: torch.cuda.max_memory_allocated" if gpu else
                                                "; peak GPU memory needs a GPU"), gpu=gpu)
            for (family, dtype), parts in cells.items()]
    if not gpu:
        rows.append(row(f"{TRAIN_NAME}, bf16", NO_GPU, "autocast bf16 runs on a GPU only (loop.autocast_dtype)"))
        rows.append(row(check, NO_GPU, "peak GPU memory needs a GPU; the fp32 rows above ran on the CPU"))
        return rows
    # the classical prefill runs on the CPU, in the loader's workers: what it costs a batch (here, on all of
    # torch's threads) says how many workers it needs to keep up
    gray, mask = batches[0][0], batches[0][1]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        prefill(gray, mask, *_prefill_of(any_cfg))
        best = min(best, time.perf_counter() - t)
    parts = []
    for dtype in dict.fromkeys(d for d, *_ in peaks):
        mine = [p for p in peaks if p[0] == dtype]
        over = [p for p in mine if p[1] > LIMIT_GIB]
        if over:
            parts.append(f"{dtype}: {len(over)} of {len(mine)} OVER {LIMIT_GIB:g} GiB: " + ", ".join(
                f"{w} ({'out of memory' if p == float('inf') else f'{p:.1f} GiB'})" for _, p, _, w in over))
        else:
            _, p, r, w = max(mine, key=lambda x: x[1])
            parts.append(f"{dtype}: all {len(mine)} fit, largest {p:.1f} GiB ({w}; reserved {r:.1f} GiB)")
    result = "; ".join(parts) or "nothing measured"
    searched = [k for k, v in config["model"].items() if _is_dist(v)]
    note = (f"{how}: every combination of model {', '.join(searched)} at {size} px, batch {bs}, in "
            f"{' and '.join(dict.fromkeys(_dtype_name(autocast_dtype(a, device)) for a in amps))}; loss "
            f"{any_cfg['loss']} (searched weights at their highest), aux gray {any_cfg['aux_gray_weight']}, chroma "
            f"rebalance {any_cfg['chroma_rebalance']}; AdamW, GradScaler for fp16 only, grad clip "
            f"{any_cfg['grad_clip']}; {warmup} warm-up + {steps} timed steps on preloaded batches (no data wait), "
            f"random weights; peak: torch.cuda.max_memory_allocated (the CUDA context, ~0.5 GiB, is not in it; "
            f"reserved: max_memory_reserved); the {_prefill_of(any_cfg)[0]} prefill is computed by the loader (its "
            f"workers), not in the timed step: {best * 1000:.0f} ms per batch of {bs} on "
            f"{torch.get_num_threads()} threads; synthetic {size} px set built in {build_s:.0f} s")
    rows.append(row(check, result, note, gpu=True))
    return rows


def bench_data_wait(quick: bool = False) -> list[dict]:
    """(e) The share of a training step spent blocked on the DataLoader (next(iter)), with dacon.yaml's
    num_workers and pin_memory, for each family's cheapest configuration (the fastest step: the worst case;
    --quick: the first family only)."""
    start = _training_start(DATA_WAIT_NAME, quick)
    if isinstance(start, list):
        return start
    gpu, device, (config, how, setting, training_cfg, frame, class_weights, build_s) = start
    import torch

    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.loop import loader_workers, train_loader

    grid = model_grid(config)
    size, bs = setting["size"], setting["batch_size"]
    steps = QUICK["steps"] if quick else FULL["wait_steps"]
    first_cfg = training_cfg(grid[0])
    cpus = trial_cpus()
    workers = trial_workers(first_cfg["num_workers"], cpus)  # what a dacon.yaml trial gets, not this process
    node_workers = loader_workers("auto")  # a trial given every core of this node
    dataset = RestorationDataset(frame, size, train=True, extra_damage=first_cfg["extra_damage"],
                                 flip=first_cfg["flip"], seed=0, uint8=True)  # as the training loop's

    def loader(model, n_workers: int):  # the training loop's loader (the classical prefill in its workers)
        cfg = {**first_cfg, "batch_size": bs, "num_workers": n_workers}
        return train_loader(dataset, cfg, model, device, generator=torch.Generator().manual_seed(0))

    any_model = _Trainer(_smallest(grid, _families(grid)[0]), first_cfg, torch.device("cpu"), "fp32", 1).model

    def alone(n_workers: int) -> tuple[float, float]:
        """(images/s, seconds to the first batch) of the loader with nothing else running."""
        t = time.perf_counter()
        it = iter(loader(any_model, n_workers))
        next(it)
        first = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            next(it)
        return steps * bs / (time.perf_counter() - t), first

    alone_rate, first_s = alone(workers)
    more = ""
    counts = [workers]
    # what the same trial waits with dacon.yaml's advice for H100-class nodes (cpu 8), and given every core here
    advised = trial_workers(first_cfg["num_workers"], ADVISED_GPU_NODE_CPUS)
    for n_workers, why in ((advised, f"cpu {ADVISED_GPU_NODE_CPUS}, the advice for such nodes"),
                           (node_workers, "a trial given every core here")):
        if workers < n_workers <= node_workers and n_workers not in counts and not quick:
            rate, _ = alone(n_workers)
            more += f"; with {n_workers} workers ({why}): {rate:.0f} images/s"
            counts.append(n_workers)
    dtype = "?"

    def share(m: dict, cfg: dict, n_workers: int) -> str:
        """One model's training steps fed by `n_workers` loader workers: the share of time spent waiting."""
        nonlocal dtype
        _clear_gpu()
        trainer = _Trainer(m, cfg, device, "auto", steps + 1, class_weights(cfg))
        dtype = _dtype_name(trainer.amp_dtype)
        it = iter(loader(trainer.model, n_workers))
        trainer.step(*next(it))  # warm-up, and the workers' start
        wait = busy = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            trainer.step(*batch)
            _sync()
            wait, busy = wait + t1 - t0, busy + time.perf_counter() - t1
        return (f"{100 * wait / (wait + busy):.0f}% ({1000 * wait / steps:.0f} ms wait, {1000 * busy / steps:.0f} ms "
                f"step)" + (f" with {n_workers} workers" if n_workers != workers else ""))

    parts = []
    for family in _families(grid)[:1] if quick else _families(grid):
        m = _smallest(grid, family)
        cfg = training_cfg(m)
        shares = []
        for n_workers in counts:
            try:
                shares.append(share(m, cfg, n_workers))
            except Exception as e:
                shares.append(missing(e))
        parts.append(f"{family} {_label(m)}: " + ", ".join(shares))
    _clear_gpu()
    note = (f"{_device_text(device)}, {size} px, batch {bs}, {dtype}; share = time blocked in next(loader) / (that + "
            f"the training step), over {steps} step{'s' if steps > 1 else ''} after the first; loop.train_loader (the "
            f"{_prefill_of(first_cfg)[0]} prefill in its workers) over RestorationDataset(train=True, extra_damage "
            f"{first_cfg['extra_damage']}: dacon.yaml's highest), DataLoader num_workers {workers} (dacon.yaml's "
            f"{first_cfg['num_workers']!r} with its resources.cpu {cpus}), uint8 batches converted on the "
            f"device, pin_memory {gpu}, on {os.cpu_count()} CPUs; the loader alone: {alone_rate:.0f} images/s, first "
            f"batch after {first_s:.1f} s (worker start, paid every epoch){more}")
    return [row(DATA_WAIT_NAME, "; ".join(parts), note, gpu=gpu)]


def bench_validation_epoch(quick: bool = False) -> list[dict]:
    """(f) One epoch's validation as training runs it (imgrestore.training.evaluate: forward, chroma gain
    calibration, scoring) on dacon.yaml's max_val_images at 512 px with the metric training uses on this device
    (the torch metric, batched on a GPU), the CPU metric on a subset for comparison (the same images scored by
    both: the scores must agree), and the share of an epoch it takes next to training a DACON-sized epoch."""
    start = _training_start(VALIDATION_NAME, quick)
    if isinstance(start, list):
        return start
    gpu, device, (config, how, setting, training_cfg, frame, class_weights, build_s) = start
    import torch

    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.evaluate import GAIN_GRID, HOLE_GRID, evaluate, metric_backend

    grid = model_grid(config)
    family = "unet" if "unet" in _families(grid) else _families(grid)[0]
    m = _smallest(grid, family)
    cfg = training_cfg(m)
    n = min(QUICK["val_images"] if quick else int(cfg["max_val_images"]), len(frame))
    n_cpu = min(n, QUICK["val_images"] if quick else FULL["cpu_val_images"])
    size = setting["size"]
    trainer = _Trainer(m, cfg, device, "auto", 1)  # the model, and the autocast setting training validates in
    model, autocast, dtype = trainer.model, trainer.autocast, _dtype_name(trainer.amp_dtype)
    torch.manual_seed(0)
    head = getattr(model, "chroma_head", None)
    if head is not None:  # a zero-initialised head predicts gray: give it colour, so the calibration has a choice
        torch.nn.init.normal_(head[-1].weight, std=0.05)
    calib = min(n, 64)
    what = f"{family} {_label(m)} ({dtype}, random weights, colour head randomised)"
    backend = metric_backend("auto", device)

    def timed(limit: int, metric: str) -> tuple[dict, float]:
        model.chroma_gain, model.hole_chroma = 1.0, 1.0
        _sync()
        t = time.perf_counter()
        got, _ = evaluate(model, RestorationDataset(frame.iloc[:limit], size), device, limit, 0,
                          calibrate=bool(cfg["calibrate_gain"]), autocast=autocast, metric=metric)
        _sync()
        return got, time.perf_counter() - t

    rows = []
    try:
        timed(2, backend)  # warm-up: kernels, allocations
        got, sec = timed(n, backend)
        scorings = 2 * n + calib * (len(GAIN_GRID) + (len(HOLE_GRID) if got.get("chroma_gain") else 0))
        share = ""
        if gpu:
            batches = _batches_of(RestorationDataset(frame, size, train=True, uint8=True), setting["batch_size"], 2,
                                  pin=True, prefill=_prefill_of(cfg))
            step = _time_training(m, cfg, device, "auto", batches, FULL["warmup"], FULL["steps"], class_weights(cfg))
            epoch_s = DACON_TRAIN_PAIRS / step["images_per_s"]
            share = (f"; next to a training epoch of {DACON_TRAIN_PAIRS} pairs at this configuration's "
                     f"{step['images_per_s']:.0f} images/s ({epoch_s:.0f} s): {sec / (sec + epoch_s):.1%} of the epoch")
        rows.append(row(f"{VALIDATION_NAME}, as training ({backend} metric on {device.type})",
                        f"{sec:.1f} s for {n} images ({1000 * sec / n:.0f} ms/image)" + share,
                        f"training.evaluate on {_device_text(device)}, {size} px: {what} forward, the chroma gain "
                        f"chosen on the first {calib} images ({len(GAIN_GRID)} gains, then {len(HOLE_GRID)} hole "
                        f"factors unless the gain is 0), every image scored at gain 0 and at the chosen gain: "
                        f"{scorings} scorings; n = {'--quick' if quick else 'dacon.yaml max_val_images'}", gpu=gpu))
    except Exception as e:
        rows.append(row(f"{VALIDATION_NAME}, as training", missing(e)))
    if backend != "numpy" or quick:
        name = f"{VALIDATION_NAME}, CPU metric (imgrestore.metrics) for comparison"
        try:
            ref, ref_s = timed(n_cpu, "numpy")
            same, _ = timed(n_cpu, "torch")
            rows.append(row(name, f"{ref_s:.1f} s for {n_cpu} images ({1000 * ref_s / n_cpu:.0f} ms/image; "
                            f"~{ref_s * n / n_cpu:.0f} s for {n})",
                            f"the same evaluate with metric='numpy' (what a CPU trial uses) on the first {n_cpu} "
                            f"images; |score - torch metric's| on them {abs(ref['score'] - same['score']):.1e}, "
                            f"gain/hole {(ref.get('chroma_gain'), ref.get('hole_chroma'))} vs "
                            f"{(same.get('chroma_gain'), same.get('hole_chroma'))}", gpu=gpu))
        except Exception as e:
            rows.append(row(name, missing(e)))
    _clear_gpu()
    return rows


def bench_two_trial_search(quick: bool = False) -> list[dict]:
    """(g) A two-trial search end to end on this node: preprocess (embeddings, scene clusters, folds) of the
    synthetic set, then tuning.search.run_search (Ray Tune + an MLflow store, the classical baselines first) over
    dacon.yaml with 2 trials of one epoch; wall time by stage."""
    gpu = cuda_available()
    if not gpu and not quick:
        return [row(SEARCH_NAME, NO_GPU, "on a CPU, --quick runs a tiny one")]
    try:
        import ray
        import torch
        from ray import tune

        import mlflow  # noqa: F401  (the search's store)

        from imgrestore.preprocess import run_preprocess
        from imgrestore.tracking import setup_tracking
        from imgrestore.tuning.search import run_search
        from imgrestore.tuning.space import check_space, load_space

        root, build_s = synthetic_set(quick)
    except Exception as e:
        return [row(SEARCH_NAME, missing(e))]

    class Clock(tune.Callback):
        first_start = None

        def on_trial_start(self, iteration, trials, trial, **info):
            if Clock.first_start is None:
                Clock.first_start = time.perf_counter()

    space = load_space(DACON_YAML)
    val = QUICK["search_val_images"] if quick else FULL["search_val_images"]
    overrides = {"epochs": 1, "max_val_images": val}
    space.num_samples, space.scheduler = 2, {"name": "fifo"}  # one epoch: ASHA would have nothing to stop
    if quick:
        overrides.update(image_size=QUICK["size"], num_workers=0)
    if not gpu:
        space.resources = {"cpu": 1, "gpu": 0}
    baselines, left_out = _baselines_this_node()
    with tempfile.TemporaryDirectory(prefix="imgrestore-doctor-search-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        t0 = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False)  # this node only, never a cluster
        try:
            ray_s = time.perf_counter() - t0
            t = time.perf_counter()
            pre = run_preprocess(root, embedder="effnet-lite0", log_mlflow=False)
            pre_s = time.perf_counter() - t
            space.config = {**space.config, **overrides, "preproc_csv": pre.paths["train_csv"]}
            check_space(space)
            setup_tracking(uri)
            t = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr), baselines:  # Tune's banner: the doctor's stdout is its report
                outcome = run_search(space, root, Path(tmp) / "runs", uri, verbose=0, callbacks=[Clock()])
            search_s = time.perf_counter() - t
            before = (Clock.first_start - t) if Clock.first_start else float("nan")
        except Exception as e:
            return [row(SEARCH_NAME, missing(e))]
        finally:
            ray.shutdown()
        total = time.perf_counter() - t0
    trials = []
    for r in outcome.results:
        mc = (r.config or {}).get("model", {})
        if r.error is not None:
            trials.append(f"{mc.get('name')} {_label(mc)}: failed ({type(r.error).__name__})")
            continue
        mt = r.metrics or {}
        trials.append(f"{mc.get('name')} {_label(mc)}: train {mt.get('train_time_s', float('nan')):.1f} s "
                      f"({mt.get('train_images_per_s', float('nan')):.1f} img/s), val "
                      f"{mt.get('val_time_s', float('nan')):.1f} s, score {mt.get('score', float('nan')):.3f}")
    failed = sum(r.error is not None for r in outcome.results)
    res = space.resources
    result = f"{total:.0f} s end to end" + (f"; {failed} of {len(outcome.results)} trials FAILED" if failed else "")
    note = (f"{_device_text(torch.device('cuda')) if gpu else 'cpu'}; synthetic "
            f"{space.config.get('image_size')} px set, {len(pre.train)} train images (fold 0 validates); Ray start {ray_s:.0f} s, "
            f"preprocess (effnet-lite0 embeddings, {pre.backend} clusters, folds; no MLflow) {pre_s:.0f} s, run_search "
            f"{search_s:.0f} s, of which {before:.0f} s before the first trial (MLflow store, classical baselines); "
            f"dacon.yaml with 2 samples, 1 epoch, max_val_images {val}, scheduler fifo, resources {res}"
            f"{', num_workers 0' if quick else ''}{left_out}; trials: " + "; ".join(trials))
    return [row(SEARCH_NAME, result, note, gpu=gpu)]


def _baselines_this_node():
    """(context, note) for the search's classical baselines on this node: all of them, or all but `fsr` where
    OpenCV has no contrib modules (a GPU node's preinstalled opencv-python without cv2.xphoto), said in the note,
    so that the measurement still runs; the product itself needs opencv-contrib (pyproject) and fails loudly."""
    import cv2

    if hasattr(cv2, "xphoto"):
        return contextlib.nullcontext(), ""
    from unittest import mock

    from imgrestore.tuning import search
    from imgrestore.tuning.baselines import CLASSICAL_FAMILIES, evaluate_baselines

    kept = tuple(f for f in CLASSICAL_FAMILIES if f != "fsr")
    patch = mock.patch.object(search, "evaluate_baselines", functools.partial(evaluate_baselines, families=kept))
    return patch, ("; the fsr baseline left out: this node's OpenCV has no contrib modules (cv2.xphoto), "
                   f"baselines {', '.join(kept)}")


TRAINING_BENCHES = {TRAIN_NAME: bench_training_throughput, DATA_WAIT_NAME: bench_data_wait,
                    VALIDATION_NAME: bench_validation_epoch, SEARCH_NAME: bench_two_trial_search}
