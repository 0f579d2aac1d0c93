"""pipelines/benchmark.py: the quick mode end to end on a tiny dataset from the bundled photos, plus its parts."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def tables_under(text: str, heading: str) -> list[list[dict]]:
    """The markdown tables between `heading` and the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading) + 1
    rest = text[start:]
    stops = [i for i, line in enumerate(rest.splitlines()) if line.startswith("#") and
             len(line.split(" ")[0]) <= len(level)]
    lines = rest.splitlines()[:stops[0]] if stops else rest.splitlines()
    tables, current = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            header, rows = current[0], current[2:]
            tables.append([dict(zip(header, r)) for r in rows])
            current = []
    return tables


def number(cell: str) -> float:
    return float(cell.replace("*", "").replace("%", "").split(" ")[0])


def test_write_sections_replaces_only_its_own(tmp_path):
    from imgrestore.benchmarking.report import write_sections

    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n## Mask detection\n\nold mask text\n\n## Restoration quality\n\nold\n\n## Other\n\nx\n")
    write_sections(doc, {"## Restoration quality": "## Restoration quality\n\nnew\n\n### sub\n\ny\n",
                         "## Throughput and cost": "## Throughput and cost\n\nt\n"})
    write_sections(doc, {"## Restoration quality": "## Restoration quality\n\nnewer\n"})
    text = doc.read_text()
    assert "old mask text" in text and "## Other\n\nx" in text
    assert text.count("## Restoration quality") == 1 and "newer" in text and "new\n\n### sub" not in text
    assert text.count("## Throughput and cost") == 1 and text.endswith("t\n")


def test_chroma_prior_keeps_luma_and_kfold_split(tmp_path, tiny_dacon):
    from PIL import Image

    from imgrestore.benchmarking.quality import ChromaPrior, kfold_split_csv, photo_overlap

    train = pd.read_csv(tiny_dacon / "train.csv")
    frame = pd.DataFrame({"gt_path": [str(tiny_dacon / p) for p in train["gt_img_path"]],
                          "cluster": np.arange(len(train)) % 3, "name": [Path(p).name for p in train["gt_img_path"]],
                          "fold": np.arange(len(train)) % 3})
    prior = ChromaPrior(frame)
    y = np.asarray(Image.open(frame["gt_path"][0]).convert("L"))
    for by_cluster in (True, False):
        rgb = prior.colorize(y, 1, by_cluster)
        assert rgb.shape == y.shape + (3,)
        diff = np.abs(np.asarray(Image.fromarray(rgb).convert("L")).astype(int) - y)  # rounding, and clipping
        assert diff.mean() < 1.0 and np.median(diff) <= 1                                # where Cb/Cr leave gamut
    csv = tmp_path / "split.csv"
    frame.to_csv(csv, index=False)
    kfold = pd.read_csv(kfold_split_csv(csv, tmp_path / "kfold.csv", 5))
    assert sorted(kfold["fold"].unique()) == [0, 1, 2, 3, 4] and len(kfold) == len(frame)
    assert 0.0 <= photo_overlap(tmp_path / "kfold.csv", tiny_dacon / "sources.csv") <= 1.0


def test_ablations_switch_off_one_ingredient_each():
    from imgrestore.benchmarking.quality import ablation_configs

    config = {"model": {"name": "effnet_unet", "freeze_encoder": True, "chroma": "regression", "prefill": "telea"},
              "loss": {"l1": 1.0, "hue_hist": 0.5}, "epochs": 3}
    out = ablation_configs(config)
    assert [k.split(" ")[0] for k in out] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    changed = {k.split(" ")[0]: cfg for k, (_, cfg) in out.items()}
    assert changed["(a)"]["model"]["prefill"] == "pushpull"
    assert changed["(b)"]["model"]["chroma"] == "classification" and changed["(b)"]["chroma_rebalance"] == 0.0
    assert changed["(c)"]["loss"] == {"l1": 1.0, "hue_hist": 0.0}
    assert changed["(d)"]["model"]["pretrained"] is False and changed["(d)"]["model"]["freeze_encoder"] is False
    assert changed["(e)"]["calibrate_gain"] is False
    assert config["model"]["prefill"] == "telea" and "calibrate_gain" not in config  # the input is left alone
    for cfg in changed.values():
        assert cfg["epochs"] == 3
    # ingredients the config does not use have no row
    plain = {"model": {"name": "unet", "chroma": "classification", "prefill": "pushpull"}, "loss": {"l1": 1.0},
             "calibrate_gain": False}
    assert [k.split(" ")[0] for k in ablation_configs(plain)] == ["(b)"]


def test_ablations_of_a_luma_only_recipe():
    """chroma: none (colour from the hue prior): (b) asks whether learned colour would have done better, the
    metric-M loss has its row, and there is no gain to calibrate."""
    from imgrestore.benchmarking.quality import ablation_configs

    config = {"model": {"name": "effnet_unet", "freeze_encoder": True, "chroma": "none", "prefill": "fsr"},
              "loss": {"l1": 1.0, "metric_m": 0.5}}
    out = ablation_configs(config)
    assert [k.split(" ")[0] for k in out] == ["(a)", "(b)", "(d)", "(g)"]
    changed = {k.split(" ")[0]: cfg for k, (_, cfg) in out.items()}
    assert changed["(b)"]["model"]["chroma"] == "regression" and changed["(b)"]["loss"]["hue_hist"] == 1.0
    assert changed["(g)"]["loss"] == {"l1": 1.0, "metric_m": 0.0}
    assert config["model"]["chroma"] == "none" and "hue_hist" not in config["loss"]  # the input is left alone


def test_demo_stage_knows_a_photo_by_its_thumbnail():
    """The demo stage leaves out the held-out photos the demo trained on, whatever their file name: a bundled
    photo saved smaller under another name is the same photo; two other photos are not."""
    import numpy as np
    from PIL import Image

    from imgrestore.benchmarking.demo import SAME_PHOTO, photos_trained_on
    from imgrestore.data.embedded import bundled_photos

    photos = bundled_photos()[:4]
    demo_train = {photos[0][0], photos[1][0]}
    smaller = np.asarray(Image.fromarray(photos[0][1]()).resize((200, 150), Image.LANCZOS))
    test = [("renamed-copy", lambda: smaller), photos[2], photos[3]]
    found, nearest_kept = photos_trained_on(test, photos, demo_train)
    assert found == {"renamed-copy": photos[0][0]} and SAME_PHOTO < nearest_kept < float("inf")
    assert photos_trained_on(test, photos, set()) == ({}, float("inf"))
    with pytest.raises(ValueError, match="not bundled photos"):
        photos_trained_on(test, photos, {"no-such-photo"})


def test_demo_space_is_make_demos_unless_quick(tmp_path):
    from imgrestore.benchmarking.demo import DEMO_SPACE, demo_space
    from imgrestore.benchmarking.runner import BenchConfig
    from imgrestore.tuning.space import load_space

    written = load_space(DEMO_SPACE)
    full = demo_space(BenchConfig(photos="bundled", work=tmp_path), "split.csv")
    assert full.config == {**written.config, "preproc_csv": "split.csv"} and full.num_samples == written.num_samples
    assert full.name == "demo-benchmark"
    quick = demo_space(BenchConfig.quick_preset(photos="bundled", work=tmp_path), "split.csv")
    assert quick.num_samples == 1 and quick.config["epochs"] == 1 and quick.config["image_size"] == 64


def test_quick_space_fits_64_px(tmp_path):
    from imgrestore.benchmarking.runner import BenchConfig, bench_space
    from imgrestore.tuning.space import load_space

    space, changes = bench_space(BenchConfig.quick_preset(photos="bundled", work=tmp_path), "split.csv")
    assert space.config["model"]["net_size"] is None and space.config["image_size"] == 64
    assert space.config["epochs"] == 2 and space.num_samples == 2 and space.scheduler == {"name": "fifo"}
    assert "model.net_size 128 -> null" in changes and space.name == "cpu-benchmark"
    full, changes = bench_space(BenchConfig(photos="bundled", work=tmp_path), "split.csv")
    assert changes == [] and full.config["model"]["net_size"] == 128  # the default run: cpu.yaml as written
    written = load_space(BenchConfig.space)
    assert full.scheduler == written.scheduler and full.num_samples == written.num_samples


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a few minutes alone; the 2-core machine is often shared
def test_quick_benchmark_writes_both_sections(tmp_path, ray_local, capsys):
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Mask detection\n\nkept as it was\n")
    assert benchmark.main(["--quick", "--photos", "bundled", "--work", str(tmp_path / "work"),
                           "--out-md", str(doc)]) == 0
    text = doc.read_text()
    assert "## Mask detection\n\nkept as it was" in text
    assert "## Restoration quality" in capsys.readouterr().out
    for section in ("## Restoration quality", "## Throughput and cost"):
        body = text[text.index(section):]
        assert text.count(section) == 1
        assert "- command: `python pipelines/benchmark.py --quick" in body and "- machine: " in body
        assert "- date: " in body

    quality = tables_under(text, "### Held-out test set (6 images; best test score in bold)")[0]
    methods = [r["method"] for r in quality]
    classical = ["classical: input_copy", "classical: telea", "classical: navier_stokes", "classical: fsr",
                 "classical: fsr_biharmonic"]
    assert methods[:14] == [*classical, *(f"{c} + hue prior" for c in classical),  # cpu.yaml: hue_prior true
                            "telea + global mean Cb/Cr", "telea + cluster Cb/Cr by luma",
                            "seed recipe, KFold validation", "platform champion"]
    assert methods[14:] in ([], ["best trial (lost on validation)"])  # when a classical restorer won
    for row in quality:
        for col in ("test S", "test M", "test C", "test score"):
            assert math.isfinite(number(row[col])) and -1 <= number(row[col]) <= 1, (row["method"], col)
    for row in [r for r in quality if not r["method"].startswith("telea + ")]:  # all but the colour priors
        assert math.isfinite(number(row["val score"])) and math.isfinite(number(row["gap (val − test)"]))
    champion = text[text.index("### The champion"):text.index("### Ablations")]
    assert "A learned family won: yes." in champion or "A learned family won: no" in champion
    assert "held-out test: " in champion and "validation: polish scored " in champion
    if "A learned family won: no" in champion:  # a classical champion is scored on every fold too, as tune.py does
        assert "the champion on every fold of the training set" in champion and "every-fold − test " in champion
    demo = text[text.index("### The demo's champion"):text.index("### Ablations")]
    assert "search_spaces/demo.yaml` at the quick run's toy sizes on the embedded dataset" in demo
    demo_rows = tables_under(text, "### The demo's champion (`make demo`, run inside this benchmark)")[0]
    assert demo_rows[0]["method"] == "demo champion" and [r["method"] for r in demo_rows[1:]] == methods  # all
    assert "the nearest photo kept is " in demo
    n_unseen = int(demo_rows[0]["images"])  # these seeds: the demo trained on some, not all, of the 6 test photos
    assert 1 <= n_unseen < 6 and {int(r["images"]) for r in demo_rows} == {n_unseen}
    assert f"- The demo's champion on the {n_unseen} held-out images of photos it never trained on: " in text
    for row in demo_rows:
        assert math.isfinite(number(row["score"])) and -1 <= number(row["score"]) <= 1
    assert all(r["demo champion − method (mean ± s.e.)"].startswith(("+", "-")) for r in demo_rows[1:])
    ablations = tables_under(text, "### Ablations")[0]
    labels = [r["ablation"].split(" ")[0] for r in ablations]
    assert labels == ["polish:", "(f)", "(a)", "(b)", "(d)", "(g)"]  # cpu.yaml's recipe: luma only, metric-M loss
    assert ablations[1]["Δ test vs (f)"] == "reference"
    for row in ablations:
        assert math.isfinite(number(row["test score"])) and math.isfinite(number(row["val score"]))
    for row in ablations[2:]:
        assert math.isfinite(number(row["train s"])) and 1 <= int(row["epoch tested"]) <= 2
    per_cluster = tables_under(text, "### Test score per scene cluster (test images' predicted cluster; best of "
                               "each row in bold)")[0]
    assert per_cluster[-1]["cluster"] == "**all**" and "champion" in per_cluster[0] and "fsr" in per_cluster[0]
    assert "model.net_size 128 -> null" in text  # quick mode: the network cannot work above 64 px

    stages = tables_under(text, "### Stages of this run")[0]
    assert {"dataset build", "inference at 128 px"} <= {r["stage"] for r in stages}
    assert all(number(r["wall s"]) >= 0 and number(r["peak memory MB"]) > 0 for r in stages)
    embedding = tables_under(text, "### Embedding: Ray Data vs a plain loop (effnet-lite0, 36 images of 64 px "
                             "from the dataset)")[0]
    assert len(embedding) == 2 and all(number(r["images/s end to end"]) > 0 for r in embedding)
    umap = [t for t in tables_under(text, "## Throughput and cost") if t and "UMAP s" in t[0]][0]
    assert [int(r["points"]) for r in umap] == [200, 400] and all(number(r["UMAP s"]) > 0 for r in umap)
    trials, share = tables_under(text, "### Tune: training throughput per trial and where the experiment's time goes")
    assert len(trials) == 2 and all(number(r["train images/s"]) > 0 for r in trials)
    shares = {r["quantity"]: number(r["value"]) for r in share}
    assert all(math.isfinite(v) for v in shares.values())
    assert 0 < shares["share of the trials' wall time spent training + validating"] <= 100
    inference = tables_under(text, "### Inference at 128 px (`restore`, one image at a time, torch on every core)")[0]
    assert len(inference) == 5 and all(number(r["images/s"]) > 0 for r in inference)  # champion, seed,
    assert [r["model"] for r in inference][-2:] == ["classical: telea", "classical: fsr"]  # untrained, classical
    growth = tables_under(text, "### How it grows from 1k to 30k images")[0]
    assert {"1k", "5k", "30k"} <= set(growth[0])
    assert any("(extrap.)" in r["30k"] for r in growth)


def test_demo_time_scores_the_registered_champion_on_held_out_images(tmp_path, tiny_dacon, monkeypatch):
    import importlib.util

    from mlflow.tracking import MlflowClient

    from imgrestore.models import create_model
    from imgrestore.tracking import get_or_create_experiment, setup_tracking
    from imgrestore.tracking.champion import log_champion
    from imgrestore.training.checkpoint import save_model

    monkeypatch.chdir(tmp_path)
    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")  # where tune.py's run would have left it
    run = MlflowClient(uri).create_run(get_or_create_experiment("demo", uri))
    ckpt = save_model(create_model("telea"), tmp_path / "telea")  # a classical champion: nothing to train
    model_uri, _, _ = log_champion(ckpt, run.info.run_id, "imgrestore-demo", uri, 0.4, "f", "test")
    spec = importlib.util.spec_from_file_location("demo_time", ROOT / "benchmarks" / "demo_time.py")
    demo_time = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_time)
    rows = demo_time.score_held_out(tmp_path, model_uri, data=tiny_dacon)
    assert list(rows) == ["demo champion", "classical: input_copy", "classical: telea", "classical: navier_stokes",
                          "classical: fsr", "classical: fsr_biharmonic"]
    assert len(rows["demo champion"]["frame"]) == 6
    pd.testing.assert_frame_equal(rows["demo champion"]["frame"], rows["classical: telea"]["frame"])
    lines = demo_time.held_out_table(rows)
    assert len(lines) == 2 + 6 and lines[2].endswith("| - |")
    assert "+0.0000 ± 0.0000 (higher on 0 of 6 images)" in lines[4]  # the champion is telea


def test_bad_input_is_an_error_line_before_any_work(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "pipelines" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    work = ["--work", str(tmp_path / "work"), "--no-write"]
    cases = [(["--photos", str(tmp_path / "nope")], "photo folder not found"),
             (["--space", str(tmp_path / "nope.yaml")], "search space not found"),
             (["--rerender"], "no saved result to rerender")]
    for args, message in cases:
        assert benchmark.main([*args, *work]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "last_result.pkl").write_bytes(b"junk")
    assert benchmark.main(["--rerender", *work]) == 2
    assert "not a saved benchmark result" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["last_result.pkl"]  # nothing built


def test_hue_specification_moves_hues_onto_the_target_histogram():
    """benchmarks/hue_headroom.py: chroma keeps its magnitudes; its hue histogram becomes the target's."""
    import importlib.util

    import cv2
    import numpy as np
    import torch

    from imgrestore.models.color import compose_rgb

    spec = importlib.util.spec_from_file_location("hue_headroom", ROOT / "benchmarks" / "hue_headroom.py")
    hue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hue)
    rng = np.random.default_rng(0)
    chroma = rng.normal(0, 0.15, (2, 24, 24))
    table = hue.HueOfChroma()

    def rgb_of(c):
        out = compose_rgb(torch.full((1, 1, 24, 24), 0.5), torch.from_numpy(c[None]).float())[0]
        return (out.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    target = np.zeros(180)
    target[[20, 110]] = [1, 3]  # a quarter of the pixels at hue 20, the rest at 110
    moved = table.specify(chroma, target)
    assert np.allclose(np.hypot(*moved), np.hypot(*chroma))
    h = hue.hue_histogram(rgb_of(moved))
    assert h[18:23].sum() == pytest.approx(144, abs=8) and h[108:113].sum() == pytest.approx(432, abs=8)
    same = table.specify(chroma, hue.hue_histogram(rgb_of(chroma)))  # its own histogram: hues barely move

    def hues(c):
        return cv2.cvtColor(rgb_of(c), cv2.COLOR_RGB2HSV)[..., 0].astype(int)

    shift = np.abs(hues(same) - hues(chroma))
    assert np.quantile(np.minimum(shift, 180 - shift), 0.95) <= 2
