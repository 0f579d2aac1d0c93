"""How long the main job takes on the embedded default, from nothing cached, and how good its champion is on
held-out images: `python pipelines/tune.py`.

    python benchmarks/demo_time.py [--write-docs docs/benchmarks.md]

Runs the pipeline in a fresh working folder with a fresh dataset cache (so the dataset build, preprocess,
the demo search, the champion and the submission are all timed) and reports wall time and peak memory of the
whole process tree. Then, outside the timing, the registered champion (`models:/imgrestore-demo@champion` in
that run's MLflow store) and every classical restorer restore the embedded dataset's held-out test set
(test_input/, scored against test_gt/, masks from `detect_mask` as at submission time).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgrestore.benchmarking.report import (MEMORY_HOW, MemorySampler, fmt, load_average, machine_info,
                                            machine_line, publish, table)

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Main job on the embedded default"


def score_held_out(work: Path, champion_uri: str, data: Path | None = None) -> dict[str, dict]:
    """method -> {"frame": per-image scores} on the embedded dataset's test set: the champion, then the classical
    restorers (and, when demo.yaml has ``hue_prior``, each decoded with the prior of the search's training fold,
    as the search offered them). `work`: the folder tune.py ran in (its mlflow.db, and the dataset cache under
    cache/); `data`: another DACON folder with test_gt/ instead of the embedded dataset."""
    from imgrestore.benchmarking import quality
    from imgrestore.data.embedded import embedded_dataset
    from imgrestore.tracking.champion import load_restorer
    from imgrestore.training.loop import read_split
    from imgrestore.tuning.decoding import fit_prior
    from imgrestore.tuning.space import load_space

    data = data or embedded_dataset(root=work / "cache" / "datasets")  # built by the run: found, not rebuilt
    test = quality.load_test_set(data)
    champion = load_restorer(champion_uri, f"sqlite:///{work / 'mlflow.db'}")
    rows = {"demo champion": {"frame": quality.score_method(test, quality.model_predictor(champion))}}
    config = load_space(ROOT / "search_spaces" / "demo.yaml").config
    prior = None
    if config.get("hue_prior") and (data / "train_preproc_1.csv").is_file():
        prior = fit_prior(read_split(str(data), None, int(config.get("val_fold", 0)))[0])
    for name, predict in quality.classical_predictors(prior).items():
        rows[f"classical: {name}"] = {"frame": quality.score_method(test, predict)}
    return rows


def held_out_table(rows: dict[str, dict]) -> list[str]:
    from imgrestore.benchmarking.render_quality import paired_text

    champ = rows["demo champion"]
    out = []
    for name, r in rows.items():
        f = r["frame"]
        out.append([name, len(f), fmt(f["ssim"].mean()), fmt(f["masked_ssim"].mean()), fmt(f["hist_sim"].mean()),
                    fmt(f["score"].mean(), 4), "-" if r is champ else paired_text(champ, r)])
    return table(["method", "images", "S", "M", "C", "score", "champion − method (mean ± s.e.)"], out, "lrrrrrl")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    info, load_before = machine_info(), load_average()
    with tempfile.TemporaryDirectory(prefix="imgrestore-demo-") as work:
        work = Path(work)
        env = {**os.environ, "IMGRESTORE_CACHE": str(work / "cache")}
        with MemorySampler() as memory:
            run = subprocess.run([sys.executable, str(ROOT / "pipelines" / "tune.py")], cwd=work, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        code, out, wall, peak = run.returncode, run.stdout.splitlines(), memory.seconds, memory.peak
        if code != 0:
            print("\n".join(out[-40:]))
            print(f"pipelines/tune.py failed with exit code {code}", file=sys.stderr)
            return code
        # the summary JSON is the pipeline's last stdout line; Ray may log after it on the merged stream
        result = json.loads(next(line for line in reversed(out) if line.startswith('{"submission"')))
        held_out = score_held_out(work, result["champion"])
    champ_test = held_out["demo champion"]["frame"]["score"].mean()
    best_trial = " / ".join(fmt(result.get(f"best_{k}")) for k in ("score", "ssim", "masked_ssim", "hist_sim"))
    rows = [("wall time, dataset build to checked submission.zip", f"{wall:.0f} s"),
            (f"peak memory: {MEMORY_HOW}", f"{peak:.0f} MB"),
            ("best trial's validation score / S / M / C", best_trial),
            (f"champion ({result['champion_kind']}): validation score, margin over the best classical restorer "
             "on validation", f"{result['champion_val_score']:.4f}, {result['margin_over_classical']:+.4f}"),
            ("champion: held-out test score, validation − test", f"{champ_test:.4f}, "
             f"{result['champion_val_score'] - champ_test:+.4f}")]
    if "trial_advantage" in result:  # the paired test the choice made (tuning.baselines.pick_champion)
        rows.insert(4, ("best trial − best classical restorer on validation, per image: mean ± clustered s.e. "
                        "(the champion's paired test: learned_sem of them must be cleared)",
                        f"{result['trial_advantage']:+.4f} ± {result['trial_advantage_sem']:.4f}"))
    if "champion_cv_score" in result:  # a classical champion, scored on every fold too
        rows.append(("classical champion on every fold: score ± s.e., every-fold − test",
                     f"{result['champion_cv_score']:.4f} ± {result['champion_cv_sem']:.4f}, "
                     f"{result['champion_cv_score'] - champ_test:+.4f}"))
    n_test = len(held_out["demo champion"]["frame"])
    section = "\n".join(
        [SECTION, "", "`python pipelines/tune.py` with no arguments (`make demo` once the environment exists), from an "
         "empty dataset cache and working folder: build the dataset from the bundled photos, preprocess, the "
         "`search_spaces/demo.yaml` search, champion, submission. Then, outside the timing, the registered champion "
         f"(`{result['champion']}`) and the classical restorers restore the embedded dataset's {n_test} held-out test "
         "images (test_input/, scored against test_gt/; masks from `detect_mask`, as at submission time).", "",
         "- command: `python benchmarks/demo_time.py --write-docs docs/benchmarks.md`",
         f"- machine: {machine_line(info)}",
         f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1/5/15 min) before "
         f"{load_before}, after {load_average()}", ""]
        + table(["quantity", "value"], [list(r) for r in rows], "lr")
        + ["", "Held-out test set of the embedded dataset (photos disjoint from the training photos):", ""]
        + held_out_table(held_out)) + "\n"
    publish({SECTION: section}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
