"""Measurements behind `python pipelines/doctor.py --bench`: what this node's GPU (or CPU) does with each stage.

Every bench function returns rows ``{"name", "result", "note", "gpu"}`` (``gpu``: True when the figure was
measured on a GPU) and never raises for a missing library: its rows say "not installed here" (or "no GPU here")
instead. Libraries are imported inside the functions, so a node with torch alone can run these modules.

This module: the row helpers and the preprocess and metric stages.
    bench_clustering   cuML vs umap-learn + hdbscan (SceneClusterer, the preprocess parameters) on synthetic,
                       well-separated clusters: time, ARI against the truth and between the two backends
    bench_embedding    the StreetCLIP architecture (ViT-L/14, 336 px; random weights, nothing downloaded)
                       through Ray Data vs a plain loop
    bench_embedding_sweep   the same model alone on a GPU: batch sizes, bf16 vs fp32
    bench_metric       the torch metric (imgrestore.torch_metrics) vs imgrestore.metrics, per 512 px image
The training code's rows (throughput and memory, data wait, validation, a two-trial search) are in
``gpu_training``, on the dacon.yaml trials and synthetic set of ``gpu_dacon``.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time

NOT_INSTALLED = "not installed here"
DACON_TRAIN_PAIRS = 30000  # the competition's training set, roughly: what an epoch costs at 512 px
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


def sync() -> None:
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
        sync()
        t = time.perf_counter()
        local = embed_images_local(paths, embedder=emb, batch_size=batch)
        sync()
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
                sync()
                t = time.perf_counter()
                for _ in range(3):
                    emb.embed_prepared(pixels)
                sync()
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
            sync()
            t = time.perf_counter()
            out = score_batch_torch(g, p, m, dtype=dtype)["score"].cpu().numpy()
            sync()
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
