"""Markdown for a BenchResult: the "## Restoration quality" and "## Throughput and cost" sections.

Every number printed here comes from the run's BenchResult; the prose only says how each was measured.
"""
from __future__ import annotations

import numpy as np

from imgrestore.benchmarking.report import MEMORY_HOW, fmt, machine_line, table
from imgrestore.benchmarking.throughput import power_law

QUALITY, THROUGHPUT = "## Restoration quality", "## Throughput and cost"
SHORT = {"damaged input as RGB": "input", "Telea inpaint, no colour": "Telea", "Telea + global mean Cb/Cr": "Telea+mean",
         "Telea + cluster Cb/Cr by luma": "Telea+LUT", "seed recipe, KFold validation": "seed (KFold)",
         "seed recipe, group-fold validation": "seed (group)", "platform champion (demo search)": "champion",
         "champion config, larger budget": "champion, longer"}
GROWTH_SIZES = (1000, 5000, 30000)


def busy(res) -> bool:
    """Was the CPU shared: a 1-minute load average above 3/4 of the cores at the start or the end?"""
    try:
        return max(float(x.split(" / ")[0]) for x in (res.machine["load_start"], res.load_end)) > \
            0.75 * res.machine["cores"]
    except (ValueError, TypeError):
        return False


def header(res, what: str) -> list[str]:
    m = res.machine
    load = (f"load average (1/5/15 min) at start {m['load_start']}, at end {res.load_end}"
            + (f" on {m['cores']} cores: other jobs shared the CPU, so absolute times are pessimistic" if busy(res)
               else ""))
    return [f"- command: `{res.cfg.command}`",
            f"- machine: {machine_line(m)}",
            f"- date: {m['date']}; {what}; {load}; every comparison below comes from this one run"]


def model_desc(model: dict | None) -> str:
    if not model:
        return "-"
    extra = "" if model.get("prefill", True) else ", no prefill"
    return f"{model['name']} {model.get('base_channels', '?')} ch, depth {model.get('depth', '?')}{extra}"


# -- quality ---------------------------------------------------------------------------------------------------
def quality_section(res) -> str:
    cfg, ds, pre, q = res.cfg, res.dataset, res.preprocess, res.quality
    lines = [QUALITY, "",
             "The competition score (0.2·S + 0.4·M + 0.4·C, `imgrestore.metrics`) of every method on the same "
             "held-out test images at the same size. Written by `pipelines/benchmark.py`.", ""]
    lines += header(res, "all training on the CPU")
    lines += [f"- data: a DACON-format dataset built by `build_dataset` from {ds['photos']} photos in {ds['origin']}"
              f" at {cfg.size}x{cfg.size}: {ds['n_train']} training images from {ds['train_photos']} photos, "
              f"{ds['n_test']} held-out test images from {ds['test_photos']} other photos (their truths in test_gt/)",
              f"- preprocess: {pre.get('embedder')} embeddings, {pre.get('backend')} UMAP + HDBSCAN: "
              f"{pre.get('n_clusters')} scene clusters, {fmt(100 * pre.get('noise_share', 0), 0)}% noise; "
              f"{pre.get('n_folds')} cluster-group folds (fold 0 validates)",
              f"- budget: {cfg.size} px, {cfg.budget_epochs} epochs for the seed's recipe and every search trial "
              f"(ASHA may stop trials early), {cfg.large_budget_epochs} epochs for the larger budget; 1 CPU thread "
              f"per run; the demo search: `{cfg.space.name}`, {res.search['n_trials']} trials, "
              f"{res.search['search'].get('algorithm')} + {res.search['scheduler'].get('name')}",
              "- masks: every method restores with `detect_mask(input)` as at test time; the metric uses the true "
              "mask (`input != gray(truth)`)", ""]
    rows, top = [], max(r["frame"]["score"].mean() for r in q.values())
    for name, r in q.items():
        f = r["frame"]
        test_score = f["score"].mean()
        val = r.get("val_score")
        rows.append([name, model_desc(r.get("model")), fmt(r.get("epochs")), r.get("val_split", "-"),
                     fmt(None if r.get("overlap") is None else 100 * r["overlap"], 0) + ("%" if r.get("overlap") is not None else ""),
                     fmt(val), fmt(f["ssim"].mean()), fmt(f["masked_ssim"].mean()), fmt(f["hist_sim"].mean()),
                     f"**{fmt(test_score)}**" if test_score == top else fmt(test_score),
                     fmt(None if val is None else val - test_score, 3),
                     fmt(r.get("train_s"), 0)])
    lines += [f"### Held-out test set ({ds['n_test']} images; best test score in bold)", ""]
    lines += table(["method", "model", "epochs", "validation split", "val images whose photo is in train",
                    "val score", "test S", "test M", "test C", "test score", "gap (val − test)", "train s"], rows,
                   "llrllrrrrrrr")
    lines += ["", "Baselines: the damaged input copied to three channels; OpenCV Telea inpainting (radius 3) of the "
              "detected region, kept gray; the same with colour from the training truths: one global mean Cb/Cr, or "
              "per scene cluster a mean Cb/Cr for each of 16 luma bins (the test image's predicted cluster; "
              "bins or clusters without data fall back to all training images). Models: validation score of the "
              "epoch that is tested (the champion: its best epoch, picked by that same score). `train s`: the "
              "run's wall time as a 1-CPU Ray task (the search's trials are in the throughput section).", ""]
    lines += per_cluster(res) + [""] + quality_notes(res)
    return "\n".join(lines) + "\n"


def per_cluster(res) -> list[str]:
    names = list(res.quality)
    frames = {n: res.quality[n]["frame"] for n in names}
    clusters = sorted(frames[names[0]]["cluster"].unique())
    train_counts = res.preprocess.get("train_cluster_counts", {})
    rows = []
    for c in clusters + ["all"]:
        means = {n: (f["score"] if c == "all" else f.loc[f["cluster"] == c, "score"]).mean() for n, f in frames.items()}
        best = max(means.values())
        n_test = int(len(frames[names[0]]) if c == "all" else (frames[names[0]]["cluster"] == c).sum())
        label = "**all**" if c == "all" else ("noise (-1)" if c < 0 else str(c))
        n_train = sum(train_counts.values()) if c == "all" else train_counts.get(str(int(c)), 0)
        rows.append([label, n_test, n_train] + [f"**{fmt(v)}**" if v == best else fmt(v) for v in means.values()])
    out = (["### Test score per scene cluster (test images' predicted cluster; best of each row in bold)", ""]
           + table(["cluster", "test images", "train images"] + [SHORT.get(n, n) for n in names], rows))
    base = [n for n in names if res.quality[n]["kind"] == "baseline"]
    keep = [max(base, key=lambda n: frames[n]["score"].mean())] + [n for n in names if n not in base and n !=
                                                                   "seed recipe, group-fold validation"]
    long = []
    for c in clusters + ["all"]:
        for n in keep:
            f = frames[n] if c == "all" else frames[n][frames[n]["cluster"] == c]
            label = "**all**" if c == "all" else ("noise (-1)" if c < 0 else str(c))
            long.append([label, SHORT.get(n, n), len(f)] + [fmt(f[k].mean()) for k in
                                                            ("ssim", "masked_ssim", "hist_sim", "score")])
    out += ["", "S, M and C per cluster for the best baseline and the trained models:", ""]
    out += table(["cluster", "method", "test images", "S", "M", "C", "score"], long, "llrrrrr")
    return out


def quality_notes(res) -> list[str]:
    q = res.quality
    score = {n: r["frame"]["score"].mean() for n, r in q.items()}
    base = {n: s for n, s in score.items() if q[n]["kind"] == "baseline"}
    best_base = max(base, key=base.get)
    best = max(score, key=score.get)
    champ, longer = "platform champion (demo search)", "champion config, larger budget"
    seed_k, seed_g = "seed recipe, KFold validation", "seed recipe, group-fold validation"
    gap = {n: q[n]["val_score"] - score[n] for n in (seed_k, seed_g, champ, longer)}

    def paired(a: str, b: str) -> str:
        """Mean per-image difference a - b, its standard error, and on how many images a scores higher."""
        d = q[a]["frame"].set_index("name")["score"] - q[b]["frame"].set_index("name")["score"]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        return f"{d.mean():+.4f} ± {fmt(se, 4)} (higher on {int((d > 0).sum())} of {len(d)} images)"

    out = ["### Reading it (figures from the tables above)", "",
           f"- Best on the held-out set: {best} ({fmt(score[best], 4)}); best baseline: {best_base} "
           f"({fmt(score[best_base], 4)}). Per-image differences (mean ± standard error): champion − best baseline "
           f"{paired(champ, best_base)}; larger budget − best baseline {paired(longer, best_base)}; champion − the "
           f"seed's recipe at the same budget {paired(champ, seed_k)}.",
           f"- Leakage: the seed's KFold validation put {fmt(100 * q[seed_k]['overlap'], 0)}% of its validation "
           f"images next to a crop of the same photo in training; its validation score exceeds its held-out score by "
           f"{gap[seed_k]:+.3f}. The same recipe validated on the cluster-group fold "
           f"({fmt(100 * q[seed_g]['overlap'], 0)}% such images): {gap[seed_g]:+.3f}; the KFold split changed the "
           f"gap by {gap[seed_k] - gap[seed_g]:+.3f}. Champion (best epoch of the "
           f"best trial, so selection bias included): {gap[champ]:+.3f}; larger budget (last epoch): "
           f"{gap[longer]:+.3f}.",
           f"- Cross-check through the submission path (`write_submission` zip scored by `score_directory`): "
           f"champion {fmt(res.search['submission']['score'])} on {res.search['submission']['n']} images.",
           "- Validation and test sets differ in their images, so a gap mixes optimism with the sets' difficulty; "
           "the two seed rows differ only in which fold validates (and so which images train), which isolates the "
           "split's part as far as one run can. Scene clusters do not always hold every crop of a photo, hence "
           "the group fold's small share of validation images with a photo in training."]
    return out


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
    rows.append([f"memory: a trial's decoded pairs ({res.cfg.size} px; 512 px in brackets)",
                 "computed: 5 bytes per pixel (gray, mask, RGB) per image, linear"] +
                [f"{fmt(n * mb, 0)} MB [{fmt(n * 5 * 512 ** 2 / 2**20, 0)} MB]" for n in GROWTH_SIZES])
    return (["### How it grows from 1k to 30k images", "",
             "Measured where the run measured that size; everything marked (extrap.) is EXTRAPOLATED from the "
             "measured points by the rule in the basis column.", ""]
            + table(["stage", "basis", "1k", "5k", "30k"], rows, "llrrr"))
