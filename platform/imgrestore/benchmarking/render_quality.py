"""Markdown for the "## Restoration quality" section of a BenchResult.

Every number and every comparison word here (higher, lower, won) is computed from the run; the fixed prose only
says how each figure was measured.
"""
from __future__ import annotations


from imgrestore.benchmarking.demo import SAME_PHOTO
from imgrestore.benchmarking.report import fmt, header, model_desc, table
from imgrestore.benchmarking.runner import BEST_TRIAL, CHAMPION, SEED
from imgrestore.tuning.baselines import PairedAdvantage, label

QUALITY = "## Restoration quality"
SHORT = {"telea + global mean Cb/Cr": "telea+mean", "telea + cluster Cb/Cr by luma": "telea+LUT",
         SEED: "seed (KFold)", CHAMPION: "champion", BEST_TRIAL: "best trial"}
SKIP_CONFIG = ("data_dir", "preproc_csv")  # paths of this machine, not part of the recipe


def short(name: str) -> str:
    return SHORT.get(name, name.replace("classical: ", ""))


def test_score(row: dict) -> float:
    return float(row["frame"]["score"].mean())


def paired(a: dict, b: dict) -> PairedAdvantage:
    """Per-image test score of row a minus row b, the same images matched by name: mean, standard error,
    images where a is higher (the champion's paired test's arithmetic, here on held-out images)."""
    sa = a["frame"].set_index("name")["score"]
    return PairedAdvantage.of(sa.to_numpy(), b["frame"].set_index("name")["score"].loc[sa.index].to_numpy())


def paired_text(a: dict, b: dict) -> str:
    return paired(a, b).text()


def flat_config(config: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        if k in SKIP_CONFIG:
            continue
        out += flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) else \
            [f"{prefix}{k}={f'{v:.4g}' if isinstance(v, float) else v}"]
    return out


def quality_section(res) -> str:
    cfg, ds, pre, s, champ = res.cfg, res.dataset, res.preprocess, res.search, res.champion
    trial = champ["trial"]
    side_epochs = trial["config"]["epochs"] if trial else s["epochs"]
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
              f"- search: `{s['space']}` ({', '.join(s['changes']) or 'as written'}): {s['n_trials']} "
              f"trials, {s['search'].get('algorithm')} + {s['scheduler'].get('name')}, {s['epochs']} epochs per "
              f"trial at {s['image_size']} px, 1 CPU thread per trial; the classical restorers scored first on the "
              "same validation images (`evaluate_baselines`)",
              f"- ablations and the seed's recipe: {side_epochs} epochs each (the best trial's config), one 1-CPU Ray "
              "task each, side by side; each tested at its best validation epoch",
              "- masks: every method restores with `detect_mask(input)` as at test time; the metric uses the true "
              "mask (`input != gray(truth)`); validation (val score) feeds the true mask, as training does", ""]
    lines += main_table(res) + [""] + champion_lines(res) + [""] + demo_lines(res) + [""] + ablation_lines(res) + [""]
    lines += per_cluster(res) + [""] + notes(res)
    return "\n".join(lines) + "\n"


def main_table(res) -> list[str]:
    q = res.quality
    top = max(test_score(r) for r in q.values())
    rows = []
    for name, r in q.items():
        f, val, score = r["frame"], r.get("val_score"), test_score(r)
        overlap = r.get("overlap")
        rows.append([name, model_desc(r.get("model")), fmt(r.get("best_epoch")), r.get("val_split", "-"),
                     "-" if overlap is None else f"{fmt(100 * overlap, 0)}%", fmt(val), fmt(f["ssim"].mean()),
                     fmt(f["masked_ssim"].mean()), fmt(f["hist_sim"].mean()),
                     f"**{fmt(score)}**" if score == top else fmt(score),
                     fmt(None if val is None else val - score, 3), fmt(r.get("train_s"), 0)])
    candidates = ", ".join(res.champion["trial"]["scores"]) if res.champion["trial"] else "-"
    return ([f"### Held-out test set ({res.dataset['n_test']} images; best test score in bold)", ""]
            + table(["method", "model", "epoch tested", "validation split", "val images whose photo is in train",
                     "val score", "test S", "test M", "test C", "test score", "gap (val − test)", "train s"], rows,
                    "llrllrrrrrrr")
            + ["", "Classical: the registered restorers (`imgrestore.models.classical`, nothing trained) at their "
               "defaults; their val score is the search's `evaluate_baselines` on the trials' validation images. "
               "Colour priors: the `telea` restorer's gray with Cb/Cr from the training truths, one global mean, or "
               "per scene cluster a mean for each of 16 luma bins (the test image's predicted cluster; bins or "
               "clusters without data fall back to all training images). Seed recipe: the original seed's "
               "two-stage U-Net, L1 + MSE, no prefill, no gain calibration, validated on a shuffled KFold fold of "
               "images, on today's Restorer base (the known gray kept exactly). Champion: as `pipelines/tune.py` "
               f"picks it: the best trial's best checkpoint, its inference prefill chosen on validation among "
               f"{candidates} (`polish_prefill`), kept only if its per-image advantage over the best classical restorer "
               "on validation clears the space's `learned_sem` standard errors (and `learned_margin`), else the best "
               "classical restorer (`pick_champion`); \"best trial (lost "
               "on validation)\": the best trial when it was not chosen. `train s`: a run's wall time as a 1-CPU "
               "Ray task (the trials' are in the throughput section)."])


def best_classical(q: dict) -> str:
    return max((n for n, r in q.items() if r["kind"] == "classical"), key=lambda n: test_score(q[n]))


def _short_of(trial_score: float, choice) -> str:
    """Why the best trial is not the champion: below the classical restorer, or above it by too little for the
    paired test (learned_sem standard errors, learned_margin)."""
    text = f"the best trial scored {fmt(trial_score, 4)} on validation after polish, "
    if choice.trial_higher_but_refused:
        return text + (f"{trial_score - choice.score:+.4f} over it"
                       + (f" (per image {choice.advantage.text()})" if choice.advantage else "")
                       + f", too little: a trial must {choice.rule()} (learned_sem, learned_margin).")
    return text + "below it."


def champion_lines(res) -> list[str]:
    q, champ = res.quality, res.champion
    choice, trial = champ["choice"], champ["trial"]
    won = choice.kind == "trial"
    c = q[CHAMPION]
    bc = best_classical(q)
    out = ["### The champion", ""]
    if won:
        out.append(f"- chosen: {model_desc(c['model'])}, trial {trial['id']}, epoch {trial['epoch']}. A learned "
                   "family won: yes.")
    else:
        out.append(f"- chosen: the classical restorer `{label(choice.name, choice.decoding)}`. A learned family "
                   "won: no - "
                   + (_short_of(trial["score"], choice) if trial
                      else f"no trial left a checkpoint ({champ.get('error')})."))
    if trial:
        out.append(f"- the best trial's config: `{'; '.join(flat_config(trial['config']))}`")
        out.append(f"- validation: polish scored {', '.join(f'{k} {v:.4f}' for k, v in trial['scores'].items())} "
                   f"and kept {label(trial['prefill'], trial.get('decoding'))}; the best classical restorer on "
                   "the same images, "
                   f"`{choice.best_classical}`, {fmt(choice.best_classical_score, 4)}: margin (best trial − it) "
                   f"{trial['score'] - choice.best_classical_score:+.4f}"
                   + (f", per image {choice.advantage.text()}" if choice.advantage else "") + ".")
    f = c["frame"]
    same = not won and label(choice.name, choice.decoding) == q[bc]["family"]
    versus = (f"champion − it {paired_text(c, q[bc])}" if not same
              else "the champion is that restorer")
    out.append(f"- held-out test: {fmt(test_score(c), 4)} (S {fmt(f['ssim'].mean())}, M {fmt(f['masked_ssim'].mean())}"
               f", C {fmt(f['hist_sim'].mean())}); validation − test {c['val_score'] - test_score(c):+.4f}; the best "
               f"classical restorer on the test set, `{short(bc)}`, {fmt(test_score(q[bc]), 4)}: {versus}.")
    folds = champ.get("folds")
    if folds is not None:  # a classical champion: every fold can validate it
        out.append(f"- the champion on every fold of the training set (a fold's hue prior fitted on the other "
                   f"folds; the mean of the fold means): {folds.text()}; every-fold − test "
                   f"{folds.score - test_score(c):+.4f}.")
    elif champ.get("folds_error"):
        out.append(f"- the champion could not be scored on every fold: {champ['folds_error']}.")
    if BEST_TRIAL in q:
        out.append(f"- the best trial (polished) on the test set: {fmt(test_score(q[BEST_TRIAL]), 4)}; best trial − "
                   f"`{short(bc)}` {paired_text(q[BEST_TRIAL], q[bc])}.")
    return out


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def on_images(row: dict, names: list[str]) -> dict:
    """A row of the main table restricted to the images `names` (the demo's), in that order."""
    return {"frame": row["frame"].set_index("name").loc[names].reset_index()}


def demo_lines(res) -> list[str]:
    """`make demo`'s champion (trained inside this run) beside every row of the main table, on the held-out
    images of photos the demo never trained on."""
    d = res.demo
    if d is None:
        return []
    out = ["### The demo's champion (`make demo`, run inside this benchmark)", ""]
    if d.get("failed"):
        return out + [f"- the demo stage failed: {d['failed']}"]
    choice, trial = d["choice"], d["trial"]
    if choice.kind == "classical":
        how = (f"the classical restorer `{label(choice.name, choice.decoding)}` ("
               + (f"no trial left a checkpoint: {d.get('error')})" if trial is None
                  else f"no trial could {choice.rule()})"))
    else:
        how = f"trial {trial['id']}, epoch {trial['epoch']}" + (
            f", per image on its validation {choice.advantage.text()} over `{choice.best_classical}`"
            if choice.advantage else "")
    as_run = "at the quick run's toy sizes" if res.cfg.quick else "as `make demo` runs it"
    nearest = d.get("nearest_kept")
    out += [f"- `{d['space']}` {as_run} on the embedded dataset `{d['data']}` ({d['n_train']} training crops of "
            f"{d['train_photos']} bundled photos): {plural(d['n_trials'], 'trial')} of "
            f"{plural(d['epochs'], 'epoch')}; champion {model_desc(d['model'])}, {how}. The whole stage took "
            f"{fmt(d['wall_s'], 0)} s.",
            f"- the images: those of the {d['n_test']} held-out images whose photo the demo never trained on; left "
            f"out: {len(d['same'])} of the {d['test_photos']} test photos, demo training photos by their thumbnail ("
            + (", ".join(f"{b} = {t}" for b, t in sorted(d["same"].items())) or "none") + ")"
            + ("" if nearest is None else f"; the nearest photo kept is {fmt(nearest, 1)} gray levels from any demo "
               f"training photo (a photo is the same below {SAME_PHOTO:g})") + "."]
    if d["frame"] is None:
        return out + ["- every held-out photo was a photo the demo trained on: nothing to score."]
    ref = {"frame": d["frame"]}
    names = list(d["frame"]["name"])
    rows = [["demo champion", len(names)] + [fmt(d["frame"][k].mean()) for k in ("ssim", "masked_ssim", "hist_sim")]
            + [fmt(d["frame"]["score"].mean(), 4), "-"]]
    for name, r in res.quality.items():
        f = on_images(r, names)["frame"]
        rows.append([name, len(f)] + [fmt(f[k].mean()) for k in ("ssim", "masked_ssim", "hist_sim")]
                    + [fmt(f["score"].mean(), 4), paired_text(ref, {"frame": f})])
    return out + ["", *table(["method", "images", "S", "M", "C", "score", "demo champion − method (mean ± s.e.)"],
                             rows, "lrrrrrl")]


def ablation_lines(res) -> list[str]:
    ab = res.ablations
    if not ab:
        return ["### Ablations", "", "No ablations: no trial left a checkpoint."]
    ref = next(r for r in ab.values() if r.get("reference"))
    rows = []
    for name, r in ab.items():
        f = r["frame"]
        rows.append([name, r["changed"], fmt(r.get("best_epoch")), fmt(r.get("val_score")), fmt(f["ssim"].mean()),
                     fmt(f["masked_ssim"].mean()), fmt(f["hist_sim"].mean()), fmt(test_score(r)),
                     "reference" if r is ref else paired_text(r, ref), fmt(r.get("train_s"), 0)])
    return (["### Ablations", "",
             "Each ingredient of the best trial's config switched off, everything else (seed included) unchanged, "
             "trained for the config's epochs and tested at its best validation epoch (val score: that epoch's, on "
             "the search's validation images). (f) is the best trial's own checkpoint with the prefill it was "
             "trained with, no polish; the first row is the same checkpoint with the prefill polish chose. Δ: a "
             "row's per-image test score minus (f)'s, mean ± standard error, and on how many images the row is "
             "higher; an ingredient helps where switching it off gives a negative Δ.", ""]
            + table(["ablation", "changed", "epoch tested", "val score", "test S", "test M", "test C", "test score",
                     "Δ test vs (f)", "train s"], rows, "llrrrrrrlr"))


def per_cluster(res) -> list[str]:
    q = res.quality
    names = list(q)
    frames = {n: q[n]["frame"] for n in names}
    clusters = sorted(frames[names[0]]["cluster"].unique())
    train_counts = res.preprocess.get("train_cluster_counts", {})

    def label(c) -> str:
        return "**all**" if c == "all" else ("noise (-1)" if c < 0 else str(c))

    def part(f, c):
        return f if c == "all" else f[f["cluster"] == c]

    rows = []
    for c in clusters + ["all"]:
        means = {n: part(f, c)["score"].mean() for n, f in frames.items()}
        best = max(means.values())
        n_train = sum(train_counts.values()) if c == "all" else train_counts.get(str(int(c)), 0)
        rows.append([label(c), len(part(frames[names[0]], c)), n_train]
                    + [f"**{fmt(v)}**" if v == best else fmt(v) for v in means.values()])
    out = (["### Test score per scene cluster (test images' predicted cluster; best of each row in bold)", ""]
           + table(["cluster", "test images", "train images"] + [short(n) for n in names], rows))
    keep = [best_classical(q)] + [n for n in names if q[n]["kind"] in ("seed", "champion", "trial")]
    long = [[label(c), short(n), len(part(frames[n], c))]
            + [fmt(part(frames[n], c)[k].mean()) for k in ("ssim", "masked_ssim", "hist_sim", "score")]
            for c in clusters + ["all"] for n in keep]
    out += ["", "S, M and C per cluster for the best classical restorer on the test set and the trained models:", ""]
    out += table(["cluster", "method", "test images", "S", "M", "C", "score"], long, "llrrrrr")
    return out


def notes(res) -> list[str]:
    q, ab = res.quality, res.ablations
    best = max(q, key=lambda n: test_score(q[n]))
    bc = best_classical(q)
    gap = {n: r["val_score"] - test_score(r) for n, r in q.items() if r.get("val_score") is not None}
    classical_gaps = [gap[n] for n, r in q.items() if r["kind"] == "classical" and n in gap]
    learned = BEST_TRIAL if BEST_TRIAL in q else CHAMPION  # the best trial, champion or not
    n = res.search["n_trials"]
    selected = {"trial": f"The champion (the best of {n} trials, so selection included)",
                "classical": f"The best trial (the best of {n}, so selection included)" if learned == BEST_TRIAL
                else "The champion (a classical restorer: no trial left a checkpoint)"}[res.champion["choice"].kind]
    out = ["### Reading it (figures from the tables above)", "",
           f"- Best on the held-out set: {best} ({fmt(test_score(q[best]), 4)}); best classical restorer: {short(bc)} "
           f"({fmt(test_score(q[bc]), 4)}). Per-image differences (mean ± standard error): {short(learned)} − "
           f"{short(bc)} {paired_text(q[learned], q[bc])}; {short(learned)} − the seed's recipe "
           f"{paired_text(q[learned], q[SEED])}.",
           f"- Leakage: the seed's KFold validation put {fmt(100 * q[SEED]['overlap'], 0)}% of its validation images "
           f"next to a crop of the same photo in training; validation − held-out: {gap[SEED]:+.3f}. {selected} "
           f"on the cluster-group fold ({fmt(100 * q[learned]['overlap'], 0)}% such images): {gap[learned]:+.3f}. "
           "The classical restorers fit nothing: their gaps "
           f"({', '.join(f'{g:+.3f}' for g in classical_gaps)}) come from the difference between the validation and "
           "the test sets alone (their images, and the mask a method gets)."]
    telea, mean, lut = (q.get(k) for k in ("classical: telea", "telea + global mean Cb/Cr",
                                           "telea + cluster Cb/Cr by luma"))
    if telea and mean and lut:
        c = {k: r["frame"]["hist_sim"].mean() for k, r in (("t", telea), ("m", mean), ("l", lut))}
        out.append(f"- A mean colour on Telea's gray: the hue term C goes from {fmt(c['t'])} to {fmt(c['m'])} (global "
                   f"mean) and {fmt(c['l'])} (per-cluster luma table); the score from {fmt(test_score(telea))} to "
                   f"{fmt(test_score(mean))} and {fmt(test_score(lut))}.")
    if ab:
        ref = next(r for r in ab.values() if r.get("reference"))
        verdict = {"lower": [], "higher": [], "within two standard errors": []}
        for name, r in ab.items():
            if r is ref:
                continue
            diff = paired(r, ref)
            mean, se = diff.mean, diff.sem
            key = "lower" if mean < -2 * se else "higher" if mean > 2 * se else "within two standard errors"
            verdict[key].append(f"{name.split(' ')[0].rstrip(':')} {mean:+.4f}")
        out.append("- Ablation rows against (f) on the test set (mean per-image Δ): " + "; ".join(
            f"{k} than (f): {', '.join(v)}" if k != "within two standard errors" else f"{k} of (f): {', '.join(v)}"
            for k, v in verdict.items() if v) + ".")
    d = res.demo
    if d and not d.get("failed") and d["frame"] is not None:
        names = list(d["frame"]["name"])
        on_demo = {n: on_images(r, names) for n, r in q.items()}
        bc_demo = max((n for n in q if q[n]["kind"] == "classical"), key=lambda n: test_score(on_demo[n]))
        demo = {"frame": d["frame"]}
        out.append(f"- The demo's champion on the {len(names)} held-out images of photos it never trained on: "
                   f"{fmt(test_score(demo), 4)}; demo − the best classical restorer on those images ({short(bc_demo)}) "
                   f"{paired_text(demo, on_demo[bc_demo])}; demo − the platform champion "
                   f"{paired_text(demo, on_demo[CHAMPION])}.")
    sub = res.champion.get("submission")
    if sub:
        out.append(f"- Cross-check through the submission path (`write_submission` zip scored by `score_directory`): "
                   f"champion {fmt(sub['score'])} on {sub['n']} images.")
    out.append("- Validation and test sets differ in their images (and in the mask the model gets), so a gap mixes "
               "optimism with the sets' difference.")
    return out
