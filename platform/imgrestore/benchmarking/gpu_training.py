"""The GPU benchmark's rows for the training code (``pipelines/doctor.py --bench``, parts training, data-wait,
validation, search); see ``gpu`` for what every row is.
    bench_training_throughput   training images/s and peak GPU memory of every search_spaces/dacon.yaml model
                       configuration at 512 px, bf16 (the training autocast) and fp32, flagged over 24 GiB
    bench_data_wait    the share of a training step blocked on the DataLoader (a dacon.yaml trial's workers, pinned;
                       also with cpu 8's and the whole node's workers)
    bench_validation_epoch   one epoch's validation as training runs it (training.evaluate: the torch metric on
                       a GPU) against the CPU metric, and its share of a DACON-sized epoch
    bench_two_trial_search   preprocess + a two-trial Ray Tune search with MLflow on this node, wall time
They use the project's training code on a synthetic 512 px DACON-format set (``gpu_dacon``); without --quick
they measure on a GPU only (--quick: tiny, and on the CPU too, fp32).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

from imgrestore.benchmarking.gpu import DACON_TRAIN_PAIRS, NO_GPU, cuda_available, missing, row, sync
from imgrestore.benchmarking.gpu_dacon import (ADVISED_GPU_NODE_CPUS, DACON_YAML, DATA_WAIT_NAME, FULL, LIMIT_GIB,
                                               QUICK, SEARCH_NAME, TRAIN_NAME, VALIDATION_NAME, Trainer,
                                               batches_of, clear_gpu, config_label, device_text, dtype_name,
                                               families, is_dist, model_grid, one_per_family, prefill_of,
                                               smallest, synthetic_set, time_training, training_start,
                                               trial_cpus, trial_workers)


def bench_training_throughput(quick: bool = False) -> list[dict]:
    """(d) Training images/s and peak GPU memory of every dacon.yaml model configuration (family x chroma head x
    width x depth) at 512 px, batch 8, in the autocast dtype training uses (bf16; fp16 where bf16 is not native)
    and in fp32, with dacon.yaml's most expensive loss; each flagged when its peak is over 24 GiB."""
    start = training_start(TRAIN_NAME, quick)
    if isinstance(start, list):
        return start
    gpu, device, (config, how, setting, training_cfg, frame, class_weights, build_s) = start
    import torch

    from imgrestore.models.prefill import prefill
    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.loop import autocast_dtype

    check = f"{TRAIN_NAME}, {LIMIT_GIB:g} GiB check"
    grid = model_grid(config)
    measured = one_per_family(grid) if quick else grid
    size, bs = setting["size"], setting["batch_size"]
    warmup, steps = (QUICK["warmup"], QUICK["steps"]) if quick else (FULL["warmup"], FULL["steps"])
    any_cfg = training_cfg(measured[0])
    dataset = RestorationDataset(frame, size, train=True, extra_damage=any_cfg["extra_damage"], flip=any_cfg["flip"],
                                 uint8=True)  # as the training loop's
    by_prefill = {prefill_of(any_cfg): batches_of(dataset, bs, 2, pin=gpu, prefill=prefill_of(any_cfg))}
    batches = by_prefill[prefill_of(any_cfg)]
    amps = ("auto", "fp32") if gpu else ("fp32",)
    cells: dict = {}
    peaks = []  # (dtype, peak GiB or inf for out of memory, reserved GiB, which configuration)
    for amp in amps:
        dtype = dtype_name(autocast_dtype(amp, device))
        for m in measured:
            cfg = training_cfg(m)
            key = (m["name"], dtype)
            if prefill_of(cfg) not in by_prefill:  # each model gets the fill it would compute itself
                by_prefill[prefill_of(cfg)] = batches_of(dataset, bs, 2, pin=gpu, prefill=prefill_of(cfg))
            try:
                r = time_training(m, cfg, device, amp, by_prefill[prefill_of(cfg)], warmup, steps,
                                   class_weights(cfg))
            except torch.cuda.OutOfMemoryError:
                r = None
            except Exception as e:  # one configuration failing must not hide the others
                cells.setdefault(key, []).append(f"{config_label(m)}: {missing(e)}")
                continue
            where = f"{m['name']} {config_label(m)} b{bs}"
            if r is None:
                cells.setdefault(key, []).append(f"{config_label(m)}: OUT OF MEMORY")
                peaks.append((dtype, float("inf"), float("inf"), where))
            elif gpu:
                flag = f" OVER {LIMIT_GIB:g} GiB" if r["peak"] > LIMIT_GIB else ""
                cells.setdefault(key, []).append(f"{config_label(m)}: {r['images_per_s']:.1f} img/s, {r['peak']:.1f} GiB"
                                                 + flag)
                peaks.append((dtype, r["peak"], r["reserved"], where))
            else:
                cells.setdefault(key, []).append(f"{config_label(m)}: {r['images_per_s']:.1f} img/s")
        clear_gpu()
    what = f"{device_text(device)}, {size} px, batch {bs}"
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
        prefill(gray, mask, *prefill_of(any_cfg))
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
    searched = [k for k, v in config["model"].items() if is_dist(v)]
    note = (f"{how}: every combination of model {', '.join(searched)} at {size} px, batch {bs}, in "
            f"{' and '.join(dict.fromkeys(dtype_name(autocast_dtype(a, device)) for a in amps))}; loss "
            f"{any_cfg['loss']} (searched weights at their highest), aux gray {any_cfg['aux_gray_weight']}, chroma "
            f"rebalance {any_cfg['chroma_rebalance']}; AdamW, GradScaler for fp16 only, grad clip "
            f"{any_cfg['grad_clip']}; {warmup} warm-up + {steps} timed steps on preloaded batches (no data wait), "
            f"random weights; peak: torch.cuda.max_memory_allocated (the CUDA context, ~0.5 GiB, is not in it; "
            f"reserved: max_memory_reserved); the {prefill_of(any_cfg)[0]} prefill is computed by the loader (its "
            f"workers), not in the timed step: {best * 1000:.0f} ms per batch of {bs} on "
            f"{torch.get_num_threads()} threads; synthetic {size} px set built in {build_s:.0f} s")
    rows.append(row(check, result, note, gpu=True))
    return rows


def bench_data_wait(quick: bool = False) -> list[dict]:
    """(e) The share of a training step spent blocked on the DataLoader (next(iter)), with dacon.yaml's
    num_workers and pin_memory, for each family's cheapest configuration (the fastest step: the worst case;
    --quick: the first family only); without --quick also with the workers of the advised `cpu: 8` and of a
    trial given every core of this node, where those are more."""
    start = training_start(DATA_WAIT_NAME, quick)
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

    any_model = Trainer(smallest(grid, families(grid)[0]), first_cfg, torch.device("cpu"), "fp32", 1).model

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
        clear_gpu()
        trainer = Trainer(m, cfg, device, "auto", steps + 1, class_weights(cfg))
        dtype = dtype_name(trainer.amp_dtype)
        it = iter(loader(trainer.model, n_workers))
        trainer.step(*next(it))  # warm-up, and the workers' start
        wait = busy = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            trainer.step(*batch)
            sync()
            wait, busy = wait + t1 - t0, busy + time.perf_counter() - t1
        return (f"{100 * wait / (wait + busy):.0f}% ({1000 * wait / steps:.0f} ms wait, {1000 * busy / steps:.0f} ms "
                f"step)" + (f" with {n_workers} workers" if n_workers != workers else ""))

    parts = []
    for family in families(grid)[:1] if quick else families(grid):
        m = smallest(grid, family)
        cfg = training_cfg(m)
        shares = []
        for n_workers in counts:
            try:
                shares.append(share(m, cfg, n_workers))
            except Exception as e:
                shares.append(missing(e))
        parts.append(f"{family} {config_label(m)}: " + ", ".join(shares))
    clear_gpu()
    note = (f"{device_text(device)}, {size} px, batch {bs}, {dtype}; share = time blocked in next(loader) / (that + "
            f"the training step), over {steps} step{'s' if steps > 1 else ''} after the first; loop.train_loader (the "
            f"{prefill_of(first_cfg)[0]} prefill in its workers) over RestorationDataset(train=True, extra_damage "
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
    start = training_start(VALIDATION_NAME, quick)
    if isinstance(start, list):
        return start
    gpu, device, (config, how, setting, training_cfg, frame, class_weights, build_s) = start
    import torch

    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.evaluate import GAIN_GRID, HOLE_GRID, evaluate, metric_backend

    grid = model_grid(config)
    family = "unet" if "unet" in families(grid) else families(grid)[0]
    m = smallest(grid, family)
    cfg = training_cfg(m)
    n = min(QUICK["val_images"] if quick else int(cfg["max_val_images"]), len(frame))
    n_cpu = min(n, QUICK["val_images"] if quick else FULL["cpu_val_images"])
    size = setting["size"]
    trainer = Trainer(m, cfg, device, "auto", 1)  # the model, and the autocast setting training validates in
    model, autocast, dtype = trainer.model, trainer.autocast, dtype_name(trainer.amp_dtype)
    torch.manual_seed(0)
    head = getattr(model, "chroma_head", None)
    if head is not None:  # a zero-initialised head predicts gray: give it colour, so the calibration has a choice
        torch.nn.init.normal_(head[-1].weight, std=0.05)
    calib = min(n, 64)
    what = f"{family} {config_label(m)} ({dtype}, random weights, colour head randomised)"
    backend = metric_backend("auto", device)

    def timed(limit: int, metric: str) -> tuple[dict, float]:
        model.chroma_gain, model.hole_chroma = 1.0, 1.0
        sync()
        t = time.perf_counter()
        got, _ = evaluate(model, RestorationDataset(frame.iloc[:limit], size), device, limit, 0,
                          calibrate=bool(cfg["calibrate_gain"]), autocast=autocast, metric=metric)
        sync()
        return got, time.perf_counter() - t

    rows = []
    try:
        timed(2, backend)  # warm-up: kernels, allocations
        got, sec = timed(n, backend)
        scorings = 2 * n + calib * (len(GAIN_GRID) + (len(HOLE_GRID) if got.get("chroma_gain") else 0))
        share = ""
        if gpu:
            batches = batches_of(RestorationDataset(frame, size, train=True, uint8=True), setting["batch_size"], 2,
                                  pin=True, prefill=prefill_of(cfg))
            step = time_training(m, cfg, device, "auto", batches, FULL["warmup"], FULL["steps"], class_weights(cfg))
            epoch_s = DACON_TRAIN_PAIRS / step["images_per_s"]
            share = (f"; next to a training epoch of {DACON_TRAIN_PAIRS} pairs at this configuration's "
                     f"{step['images_per_s']:.0f} images/s ({epoch_s:.0f} s): {sec / (sec + epoch_s):.1%} of the epoch")
        rows.append(row(f"{VALIDATION_NAME}, as training ({backend} metric on {device.type})",
                        f"{sec:.1f} s for {n} images ({1000 * sec / n:.0f} ms/image)" + share,
                        f"training.evaluate on {device_text(device)}, {size} px: {what} forward, the chroma gain "
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
    clear_gpu()
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
            trials.append(f"{mc.get('name')} {config_label(mc)}: failed ({type(r.error).__name__})")
            continue
        mt = r.metrics or {}
        trials.append(f"{mc.get('name')} {config_label(mc)}: train {mt.get('train_time_s', float('nan')):.1f} s "
                      f"({mt.get('train_images_per_s', float('nan')):.1f} img/s), val "
                      f"{mt.get('val_time_s', float('nan')):.1f} s, score {mt.get('score', float('nan')):.3f}")
    failed = sum(r.error is not None for r in outcome.results)
    res = space.resources
    result = f"{total:.0f} s end to end" + (f"; {failed} of {len(outcome.results)} trials FAILED" if failed else "")
    note = (f"{device_text(torch.device('cuda')) if gpu else 'cpu'}; synthetic "
            f"{space.config.get('image_size')} px set, {len(pre.train)} train images (fold 0 validates); Ray start {ray_s:.0f} s, "
            f"preprocess (effnet-lite0 embeddings, {pre.backend} clusters, folds; no MLflow) {pre_s:.0f} s, run_search "
            f"{search_s:.0f} s, of which {before:.0f} s before the first trial (MLflow store, classical baselines); "
            f"dacon.yaml with 2 samples, 1 epoch, max_val_images {val}, scheduler fifo, resources {res}"
            f"{', num_workers 0' if quick else ''}{left_out}; trials: " + "; ".join(trials))
    return [row(SEARCH_NAME, result, note, gpu=gpu)]


def _baselines_this_node():
    """(context, note) for the search's classical baselines on this node: all of them, or all but the fsr ones where
    OpenCV has no contrib modules (a GPU node's preinstalled opencv-python without cv2.xphoto), said in the note,
    so that the measurement still runs; the product itself needs opencv-contrib (pyproject) and fails loudly."""
    import cv2

    if hasattr(cv2, "xphoto"):
        return contextlib.nullcontext(), ""
    from unittest import mock

    from imgrestore.tuning import search
    from imgrestore.tuning.baselines import CLASSICAL_FAMILIES, evaluate_baselines

    kept = tuple(f for f in CLASSICAL_FAMILIES if not f.startswith("fsr"))
    patch = mock.patch.object(search, "evaluate_baselines", functools.partial(evaluate_baselines, families=kept))
    return patch, ("; the fsr baselines left out: this node's OpenCV has no contrib modules (cv2.xphoto), "
                   f"baselines {', '.join(kept)}")
