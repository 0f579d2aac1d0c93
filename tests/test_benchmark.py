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


@pytest.mark.slow
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
    assert [r["method"] for r in quality] == [
        "damaged input as RGB", "Telea inpaint, no colour", "Telea + global mean Cb/Cr",
        "Telea + cluster Cb/Cr by luma", "seed recipe, KFold validation", "seed recipe, group-fold validation",
        "platform champion (demo search)", "champion config, larger budget"]
    for row in quality:
        for col in ("test S", "test M", "test C", "test score"):
            assert math.isfinite(number(row[col])) and -1 <= number(row[col]) <= 1, (row["method"], col)
    for row in quality[4:]:
        assert math.isfinite(number(row["val score"])) and math.isfinite(number(row["gap (val − test)"]))
    per_cluster = tables_under(text, "### Test score per scene cluster (test images' predicted cluster; best of "
                               "each row in bold)")[0]
    assert per_cluster[-1]["cluster"] == "**all**" and "champion" in per_cluster[0]

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
    assert len(inference) == 6 and all(number(r["images/s"]) > 0 for r in inference)
    growth = tables_under(text, "### How it grows from 1k to 30k images")[0]
    assert {"1k", "5k", "30k"} <= set(growth[0])
    assert any("(extrap.)" in r["30k"] for r in growth)


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
