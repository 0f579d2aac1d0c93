"""Markdown for a BenchResult: the "## Restoration quality" and "## Throughput and cost" sections.

Every number printed here comes from the run's BenchResult; the prose only says how each was measured.
The quality section is in render_quality.py.
"""
from __future__ import annotations

import numpy as np

from imgrestore.benchmarking.render_quality import QUALITY, quality_section  # noqa: F401  (one entry point)
from imgrestore.benchmarking.report import MEMORY_HOW, fmt, header, table
from imgrestore.benchmarking.throughput import power_law

THROUGHPUT = "## Throughput and cost"
GROWTH_SIZES = (1000, 5000, 30000)


# -- throughput ------------------------------------------------------------------------------------------------
def throughput_section(res) -> str:
    lines = [THROUGHPUT, "", "How fast each stage of the platform runs and what it holds in memory. Written by "
             "`pipelines/benchmark.py`.", ""]
    lines += header(res, "CPU only")
    lines += [f"- memory: {MEMORY_HOW}; UMAP / HDBSCAN rows: resident set of their own subprocess", "",
              "### Stages of this run", ""]
    lines += table(["stage", "wall s", "peak memory MB", "memory before MB", "note"],
                   [[r["stage"], fmt(r["seconds"], 1), fmt(r["peak_mb"], 0), fmt(r["before_mb"], 0), r["note"] or "-"]
                    for r in res.stages], "lrrrl")
    emb = res.embedding
    lines += ["", f"### Embedding: Ray Data vs a plain loop ({res.preprocess.get('embedder')}, {emb[0]['images']} "
              f"images of {res.cfg.size} px from the dataset)", ""]
    lines += table(["how", "images", "startup s", "run s", "images/s (model work)", "images/s end to end",
                    "max abs diff vs loop"],
                   [[r["how"], r["images"], fmt(r["startup_s"], 1), fmt(r["run_s"], 1), fmt(r["ips"], 1),
                     fmt(r["ips_e2e"], 1), "%.1e" % r["max_diff"] if "max_diff" in r else "-"] for r in emb], "lrrrrrr")
    lines += ["", "Plain loop: model load is the startup. Ray Data: run twice (a quarter of the images, then all); "
              "the model-work rate is the marginal rate between the two (actor start and model load cancel out), "
              "startup is the rest of the full run.", ""]
    lines += clustering(res) + [""] + tune_share(res) + [""] + inference(res) + [""] + growth(res)
    return "\n".join(lines) + "\n"


def clustering(res) -> list[str]:
    from imgrestore.clustering import cuml_available

    cl = res.clustering
    fits = {k: power_law([(r["n"], r[f"{k}_s"]) for r in cl["rows"] if f"{k}_s" in r]) for k in ("umap", "hdbscan")}
    rows = []
    for r in cl["rows"]:
        if "umap_s" in r:
            rows.append([r["n"], r["d"], fmt(r["umap_s"], 2), fmt(r["umap_peak_mb"], 0), fmt(r["hdbscan_s"], 2),
                         fmt(r["hdbscan_peak_mb"], 0), f"measured; {r['clusters']} clusters, {r['noise']:.0%} noise"])
        else:
            est = [f"~{fmt(fits[k][0] * r['n'] ** fits[k][1], 1)}" if fits[k] else "-" for k in ("umap", "hdbscan")]
            rows.append([r["n"], r["d"], est[0], "-", est[1], "-",
                         f"not done within {fmt(r['timeout'], 0)} s: EXTRAPOLATED (power law)"])
    fit_txt = "; ".join(f"{k}: t ≈ {a:.2e}·n^{b:.2f} s" for k, (a, b) in
                        ((k, f) for k, f in fits.items() if f)) or "fewer than two measured sizes"
    pre = res.preprocess
    real = (f"On this run's real embeddings ({pre.get('n_train')} training images) preprocess spent "
            f"{fmt(pre.get('cluster_seconds'), 1)} s clustering and {fmt(pre.get('embed_seconds'), 1)} s embedding."
            if not pre.get("reused") else "Preprocess outputs were reused from an earlier run (no timing of the "
            "real embeddings this time).")
    ok, why = cuml_available()
    return ([f"### UMAP + HDBSCAN (CPU: umap-learn + hdbscan; {cl['dim']}-d, the embedder's dimension)", "",
             "UMAP(n_neighbors=5, min_dist=0, 2-D) then HDBSCAN(min_cluster_size=5) on the map, as preprocess runs "
             "them, on random clustered unit vectors (time depends mainly on n and d); one subprocess, sizes in "
             f"increasing order after a numba JIT warm-up of {fmt(cl['warmup_s'], 1)} s (paid once per process, not "
             "in the rows). UMAP finds exact neighbours below 4096 points and uses NN-descent above, so a fit "
             "across that boundary is rough.", ""]
            + table(["points", "dims", "UMAP s", "UMAP peak RSS MB", "HDBSCAN s", "HDBSCAN peak RSS MB", "note"],
                    rows, "rrrrrrl")
            + ["", f"Power-law fit on the measured sizes: {fit_txt}. {real}",
               "cuML (GPU): " + ("available but not part of this CPU run." if ok else f"not measured: {why}.")])


def share(res) -> dict:
    trials, s = res.trials, res.search
    busy = sum(t["train_s"] + t["val_s"] for t in trials)
    trial_wall = sum(t["wall_s"] for t in trials)
    slot_time = s["wall_s"] * s["slots"]
    return {"busy": busy, "trial_wall": trial_wall, "slot_time": slot_time,
            "of_trials": busy / trial_wall if trial_wall else float("nan"),
            "of_slots": busy / slot_time if slot_time else float("nan")}


def tune_share(res) -> list[str]:
    s, sh = res.search, share(res)
    rows = [[t["trial"], f"{t['model']} {t['channels']} ch", t["epochs"], fmt(t["ips"], 1), fmt(t["train_s"], 1),
             fmt(t["val_s"], 1), fmt(t["wall_s"], 1), fmt(t["best_score"])] for t in res.trials]
    out = ["### Tune: training throughput per trial and where the experiment's time goes", ""]
    out += table(["trial", "model", "epochs run", "train images/s", "train s", "val s", "trial wall s",
                  "best val score"], rows)
    out += ["", "Train images/s: the trial's reported `train_images_per_s` (mean over its epochs), 1 CPU thread "
            "per trial.", ""]
    out += table(["quantity", "value"], [
        ["experiment wall time (run_search: start, trials, results)", f"{fmt(s['wall_s'], 1)} s"],
        ["concurrent trial slots", str(s["slots"])],
        ["trials' training + validation time (sum)", f"{fmt(sh['busy'], 1)} s"],
        ["trials' own wall time (sum of Tune's time_total_s)", f"{fmt(sh['trial_wall'], 1)} s"],
        ["share of the trials' wall time spent training + validating", f"{fmt(100 * sh['of_trials'], 1)}%"],
        ["share of the experiment's slot time (wall × slots) spent training + validating",
         f"{fmt(100 * sh['of_slots'], 1)}%"],
        ["the rest: trial start, data decode, checkpoints, reporting, MLflow logging, scheduling, idle slots",
         f"{fmt(100 * (1 - sh['of_slots']), 1)}%"]], "lr")
    return out


def inference(res) -> list[str]:
    rows = [[r["model"], f"{r['params'] / 1e6:.2f} M", r["images"], fmt(r["s_per_image"], 3), fmt(r["ips"], 2),
             fmt(r["ips_with_detect"], 2), fmt(r["peak_mb"], 0), fmt(r["peak_mb"] - r["before_mb"], 0)]
            for r in res.inference]
    return ([f"### Inference at {res.cfg.infer_size} px (`restore`, one image at a time, torch on every core)", ""]
            + table(["model", "parameters", "images", "s/image", "images/s", "images/s incl. detect_mask",
                     "peak memory MB", "above its start MB"], rows, "lrrrrrrr")
            + ["", f"`detect_mask` alone: {fmt(res.inference[0]['detect_s'], 3)} s per {res.cfg.infer_size} px "
               "image. Each image is restored twice and its faster pass counts (the machine is shared). Untrained "
               "rows time the architectures the search draws from (speed does not depend on the weights)."])


def _cell(seconds: float, measured: bool) -> str:
    return f"{fmt(seconds, 1)} s" + ("" if measured else " (extrap.)")


def growth(res) -> list[str]:
    rows = []
    for r in res.embedding:
        start, ips = (r["startup_s"], r["ips"]) if r["ips"] else (0.0, r["ips_e2e"])
        basis = f"linear: {fmt(start, 1)} s + n / {fmt(ips, 1)} img/s (measured at {r['images']})"
        rows.append([f"embedding, {r['how'].split(',')[0]}", basis] +
                    [_cell(start + n / ips, n == r["images"]) for n in GROWTH_SIZES])
    cl = res.clustering["rows"]
    for k, label in (("umap", "UMAP"), ("hdbscan", "HDBSCAN")):
        measured = {r["n"]: r[f"{k}_s"] for r in cl if f"{k}_s" in r}
        fit = power_law(list(measured.items()))
        basis = f"measured at {', '.join(map(str, measured))}" + (f"; power law n^{fit[1]:.2f}" if fit else "")
        rows.append([label, basis] + [_cell(measured[n], True) if n in measured else
                                      (_cell(fit[0] * n ** fit[1], False) if fit else "-") for n in GROWTH_SIZES])
    if res.trials:
        ips = float(np.median([t["ips"] for t in res.trials]))
        rows.append([f"training: one epoch of one trial ({res.cfg.size} px, 1 thread)",
                     f"linear: n / {fmt(ips, 1)} img/s (median over trials)"] +
                    [_cell(n / ips, False) for n in GROWTH_SIZES])
    champ = res.inference[0]
    rows.append([f"inference + detect_mask at {res.cfg.infer_size} px ({champ['model']})",
                 f"linear: n / {fmt(champ['ips_with_detect'], 2)} img/s"] +
                [_cell(n / champ["ips_with_detect"], False) for n in GROWTH_SIZES])
    mb = 5 * res.cfg.size ** 2 / 2**20
    rows.append([f"memory: all decoded pairs, were they held ({res.cfg.size} px; 512 px in brackets)",
                 "computed: 5 bytes per pixel (gray, mask, RGB) per image, linear; nothing holds them: training "
                 "decodes on the fly (~95 MB per loader worker at 512 px whatever n: benchmarks/loader.py)"] +
                [f"{fmt(n * mb, 0)} MB [{fmt(n * 5 * 512 ** 2 / 2**20, 0)} MB]" for n in GROWTH_SIZES])
    return (["### How it grows from 1k to 30k images", "",
             "Measured where the run measured that size; everything marked (extrap.) is EXTRAPOLATED from the "
             "measured points by the rule in the basis column.", ""]
            + table(["stage", "basis", "1k", "5k", "30k"], rows, "llrrr"))
