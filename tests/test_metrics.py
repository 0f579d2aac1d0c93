"""The DACON 236420 metric (imgrestore.metrics) and pipelines/score.py.

Fixtures are built in tmp_path from skimage's bundled chelsea photo (a 128x128 centre crop: a
colourful photo with little neutral gray, so a gray prediction's hue histogram barely correlates
with the gt's). Damage: one circle filled with one gray value in the Pillow-L gray image.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data
from skimage.metrics import structural_similarity

from imgrestore import metrics
from imgrestore.data.io import write_png
from imgrestore.data.masks import true_mask as mask_from_pair
from imgrestore.metrics import score_batch, score_image

SCORE_PY = Path(__file__).resolve().parents[1] / "pipelines" / "score.py"
KEYS = {"score", "ssim", "masked_ssim", "hist_sim"}


def make_pair(img: np.ndarray, size: int = 128, fill: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(gt RGB centre crop, damaged Pillow-L gray input with a filled circle)."""
    h, w = img.shape[:2]
    gt = np.ascontiguousarray(img[h // 2 - size // 2: h // 2 + size // 2, w // 2 - size // 2: w // 2 + size // 2])
    im = Image.fromarray(gt).convert("L")
    ImageDraw.Draw(im).ellipse((0.3 * size, 0.25 * size, 0.7 * size, 0.65 * size), fill=fill)
    return gt, np.asarray(im)


@pytest.fixture(scope="module")
def pair():
    gt, gray_in = make_pair(data.chelsea())
    return gt, gray_in, mask_from_pair(gray_in, gt)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def pillow_gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


# ----------------------------------------------------------------------------- the metric


def test_mask_from_pair_is_the_circle(pair):
    gt, gray_in, mask = pair
    assert mask.dtype == bool and mask.shape == gt.shape[:2]
    im = Image.new("L", gt.shape[1::-1], 0)
    ImageDraw.Draw(im).ellipse((0.3 * 128, 0.25 * 128, 0.7 * 128, 0.65 * 128), fill=1)
    circle = np.asarray(im) > 0
    # the circle, less the pixels whose true gray happens to equal the fill value (3)
    assert (mask == (circle & (pillow_gray(gt) != 3))).all()
    assert 1500 < mask.sum() < 2600  # a circle of diameter ~51 px, less pixels equal to the fill
    assert not mask[:20].any() and not mask[-20:].any()


def test_perfect_prediction_scores_exactly_one(pair):
    gt, _, mask = pair
    r = score_image(gt, gt.copy(), mask)
    assert r == {"score": 1.0, "ssim": 1.0, "masked_ssim": 1.0, "hist_sim": 1.0}


def test_matches_direct_library_calls(pair):
    gt, gray_in, mask = pair
    rng = np.random.default_rng(0)
    pred = np.clip(gt.astype(int) + rng.integers(-40, 41, gt.shape) + [30, -10, 0], 0, 255).astype(np.uint8)
    dr = pred.max() - pred.min()
    s = structural_similarity(gt, pred, channel_axis=-1, data_range=dr)
    m = structural_similarity(gt[mask > 0], pred[mask > 0], channel_axis=-1, data_range=dr)
    h1 = cv2.calcHist([cv2.cvtColor(gt, cv2.COLOR_RGB2HSV)], [0], None, [180], [0, 180])
    h2 = cv2.calcHist([cv2.cvtColor(pred, cv2.COLOR_RGB2HSV)], [0], None, [180], [0, 180])
    c = cv2.compareHist(cv2.normalize(h1, h1).flatten(), cv2.normalize(h2, h2).flatten(), cv2.HISTCMP_CORREL)
    r = score_image(gt, pred, mask)
    assert r["ssim"] == pytest.approx(s, abs=1e-12)
    assert r["masked_ssim"] == pytest.approx(m, abs=1e-12)
    assert r["hist_sim"] == pytest.approx(c, abs=1e-12)
    assert r["score"] == pytest.approx(0.2 * s + 0.4 * m + 0.4 * c, abs=1e-12)
    assert 0 < r["score"] < 1 and len({s, m, c}) == 3  # three distinct, non-trivial components


def test_damaged_input_as_rgb_scores_low(pair):
    gt, gray_in, mask = pair
    r = score_image(gt, to_rgb(gray_in), mask)
    assert 0.12 < r["score"] < 0.30
    assert r["masked_ssim"] < 0.15  # the flat fill has no structure
    assert abs(r["hist_sim"]) < 0.1


def test_perfect_gray_without_colour(pair):
    gt, _, mask = pair
    r = score_image(gt, to_rgb(pillow_gray(gt)), mask)
    # all hue is 0: a spike in bin 0, nearly uncorrelated with the cat's hue histogram
    assert abs(r["hist_sim"]) < 0.05
    assert r["ssim"] > 0.85 and r["masked_ssim"] > 0.85
    assert 0.50 < r["score"] < 0.62  # 0.2*S + 0.4*M with S, M ~ 0.9 (real 512px photos: ~0.59)


def test_constant_prediction_is_finite(pair):
    gt, _, mask = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero RuntimeWarning either
        r = score_image(gt, np.full_like(gt, 128), mask)
        same = score_image(np.full_like(gt, 7), np.full_like(gt, 7), mask)
    assert all(np.isfinite(v) for v in r.values())
    assert abs(r["ssim"]) < 0.05 and abs(r["masked_ssim"]) < 0.05
    assert same == {"score": 1.0, "ssim": 1.0, "masked_ssim": 1.0, "hist_sim": 1.0}


@pytest.mark.parametrize("n_masked", [0, 1, 6])
def test_tiny_or_empty_mask_falls_back_to_whole_image_ssim(pair, n_masked):
    gt, gray_in, _ = pair
    pred = to_rgb(gray_in)
    mask = np.zeros(gt.shape[:2], bool)
    mask.flat[:n_masked] = True
    with pytest.warns(UserWarning, match="masked pixels"):
        r = score_image(gt, pred, mask)
    assert r["masked_ssim"] == r["ssim"]
    assert r["score"] == pytest.approx(0.6 * r["ssim"] + 0.4 * r["hist_sim"])


def test_seven_masked_pixels_use_the_official_formula(pair):
    gt, gray_in, _ = pair
    mask = np.zeros(gt.shape[:2], np.uint8)
    mask[50, 40:47] = 255
    pred = to_rgb(gray_in)
    want = structural_similarity(gt[mask > 0], pred[mask > 0], channel_axis=-1, data_range=pred.max() - pred.min())
    assert score_image(gt, pred, mask)["masked_ssim"] == pytest.approx(want, abs=1e-12)


def test_nan_histogram_correlation_becomes_zero(pair, monkeypatch):
    gt, _, mask = pair
    monkeypatch.setattr(metrics.cv2, "compareHist", lambda *a: float("nan"))
    assert score_image(gt, gt, mask)["hist_sim"] == 0.0


def test_invalid_inputs_raise_value_error(pair):
    gt, gray_in, mask = pair
    with pytest.raises(ValueError, match="shape mismatch"):
        score_image(gt, gt[:-1], mask)
    with pytest.raises(ValueError, match="uint8"):
        score_image(gt, gt.astype(np.float32), mask)
    with pytest.raises(ValueError, match="HxWx3"):
        score_image(gt, gray_in, mask)
    with pytest.raises(ValueError, match="HxWx3"):
        score_image(np.dstack([gt, gt[..., :1]]), np.dstack([gt, gt[..., :1]]), mask)
    with pytest.raises(ValueError, match="numpy array"):
        score_image(gt.tolist(), gt, mask)
    with pytest.raises(ValueError, match="mask shape"):
        score_image(gt, gt, mask[:-1])
    with pytest.raises(ValueError, match="differ in size"):
        mask_from_pair(gray_in[:-1], gt)
    with pytest.raises(ValueError, match="no images"):
        score_batch([])


def test_score_batch_is_the_mean(pair):
    gt, gray_in, mask = pair
    preds = [gt, to_rgb(gray_in), to_rgb(pillow_gray(gt))]
    singles = [score_image(gt, p, mask) for p in preds]
    b = score_batch((gt, p, mask) for p in preds)
    assert b["n"] == 3 and set(b) == KEYS | {"n"}
    for k in KEYS:
        assert b[k] == pytest.approx(np.mean([s[k] for s in singles]))


# ----------------------------------------------------------------------------- pipelines/score.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """gt/, input/ and three prediction sets (perfect folder, damaged-input folder, flat zip)."""
    root = tmp_path_factory.mktemp("scoring")
    imgs = {"A_000.png": data.chelsea(), "A_001.png": data.coffee(), "A_002.png": data.astronaut()}
    for name, img in imgs.items():
        gt, gray_in = make_pair(img, fill={"A_000.png": 0, "A_001.png": 2, "A_002.png": 6}[name])
        write_png(root / "gt" / name, gt)
        write_png(root / "input" / name, gray_in)
        write_png(root / "perfect" / name, gt)
        write_png(root / "damaged" / name, to_rgb(gray_in))
    with zipfile.ZipFile(root / "damaged.zip", "w") as zf:
        for p in sorted((root / "damaged").iterdir()):
            zf.write(p, arcname=p.name)
    return root


def run_score(root: Path, pred: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCORE_PY), "--pred", str(pred), "--input", str(root / "input"),
           "--gt", str(root / "gt"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def last_json(stdout: str) -> dict:
    out = json.loads(stdout.strip().splitlines()[-1])
    assert set(out) == KEYS | {"n"}
    return out


def test_score_py_folder(dataset):
    res = run_score(dataset, dataset / "perfect", "--per-image")
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout) == {"score": 1.0, "ssim": 1.0, "masked_ssim": 1.0, "hist_sim": 1.0, "n": 3}
    assert "A_001.png" in res.stdout  # the per-image table


def test_score_py_zip_equals_folder(dataset):
    from_zip = run_score(dataset, dataset / "damaged.zip")
    assert from_zip.returncode == 0, from_zip.stderr
    out = last_json(from_zip.stdout)
    assert out["n"] == 3 and 0.1 < out["score"] < 0.5
    from imgrestore.metrics import score_directory

    _, want = score_directory(dataset / "damaged", dataset / "input", dataset / "gt")
    assert out == pytest.approx(want)


def test_score_py_missing_prediction(dataset, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in (dataset / "perfect").iterdir():
        if p.name != "A_001.png":
            (pred / p.name).write_bytes(p.read_bytes())
    res = run_score(dataset, pred)
    assert res.returncode != 0
    assert "A_001.png" in res.stderr and "missing" in res.stderr


def load_score_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("score_cli", SCORE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_score_py_size_mismatch_and_nested_zip(dataset, tmp_path, capsys):
    main = load_score_main()
    pred = tmp_path / "pred"
    for p in (dataset / "perfect").iterdir():
        img = np.asarray(Image.open(p))
        write_png(pred / p.name, img[:100] if p.name == "A_002.png" else img)
    args = ["--input", str(dataset / "input"), "--gt", str(dataset / "gt"), "--no-progress"]
    assert main(["--pred", str(pred), *args]) == 2
    assert "A_002.png" in capsys.readouterr().err

    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        for p in sorted((dataset / "perfect").iterdir()):
            zf.write(p, arcname=f"sub/{p.name}")
    assert main(["--pred", str(nested), *args]) == 2
    assert "folders are not allowed in the zip" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one rule with the submission check


def _defective_zip(dataset: Path, path: Path, defect: str, corrupt_png) -> Path:
    """The perfect predictions as a zip, with one defect in A_001.png (or in the member list)."""
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted((dataset / "perfect").iterdir()):
            data = p.read_bytes()
            if p.name == "A_001.png":
                im = Image.open(p).copy()
                buf = io.BytesIO()
                if defect == "gray":
                    im.convert("L").save(buf, format="PNG")
                elif defect == "jpeg":
                    im.save(buf, format="JPEG")
                elif defect == "size":
                    im.crop((0, 0, 100, 128)).save(buf, format="PNG")
                if defect in ("gray", "jpeg", "size"):
                    data = buf.getvalue()
                elif defect == "corrupt":
                    data = corrupt_png(im, "short")
                elif defect == "missing":
                    continue
            zf.writestr(p.name, data)
        if defect == "extra":
            zf.writestr("EXTRA.png", (dataset / "perfect" / "A_000.png").read_bytes())
    return path


@pytest.mark.parametrize("defect, message", [
    ("gray", "A_001.png: mode L, expected RGB"),
    ("jpeg", "A_001.png: format JPEG, expected PNG"),
    ("size", "A_001.png: size (100, 128), its input is (128, 128)"),
    ("corrupt", "A_001.png: not a readable image (corrupt PNG: pixel data decodes to"),
    ("missing", "A_001.png: missing from the zip"),
    ("extra", "EXTRA.png: not a test input name"),
])
def test_score_rejects_what_a_submission_rejects(dataset, tmp_path, capsys, corrupt_png, defect, message):
    import pandas as pd

    from imgrestore.submission.predict import SubmissionError, check_submission

    bad = _defective_zip(dataset, tmp_path / "bad.zip", defect, corrupt_png)
    names = sorted(p.name for p in (dataset / "input").iterdir())
    test = pd.DataFrame({"name": names, "input_path": [str(dataset / "input" / n) for n in names]})
    with pytest.raises(SubmissionError) as e:
        check_submission(bad, test)
    assert message in str(e.value)
    main = load_score_main()
    assert main(["--pred", str(bad), "--input", str(dataset / "input"), "--gt", str(dataset / "gt"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    # the very same problem lines, word for word
    assert [line for line in str(e.value).splitlines()[1:]] == err.strip().splitlines()[1:]


def test_score_folder_may_hold_other_files_but_not_gray_predictions(dataset, tmp_path, capsys):
    main = load_score_main()
    pred = tmp_path / "pred"
    for p in (dataset / "perfect").iterdir():
        (pred / p.name).parent.mkdir(exist_ok=True)
        (pred / p.name).write_bytes(p.read_bytes())
    (pred / "notes.txt").write_text("a folder is not a submission: other files are fine")
    args = ["--input", str(dataset / "input"), "--gt", str(dataset / "gt"), "--no-progress"]
    assert main(["--pred", str(pred), *args]) == 0
    capsys.readouterr()
    Image.open(pred / "A_002.png").convert("L").save(pred / "A_002.png")
    assert main(["--pred", str(pred), *args]) == 2
    assert "A_002.png: mode L, expected RGB" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["pred", "gt", "input", "junk_zip"])
def test_score_missing_or_bad_paths(dataset, tmp_path, capsys, what):
    main = load_score_main()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    paths = {"pred": dataset / "perfect", "gt": dataset / "gt", "input": dataset / "input"}
    paths[what if what != "junk_zip" else "pred"] = tmp_path / ("junk.zip" if what == "junk_zip" else "nope")
    assert main(["--pred", str(paths["pred"]), "--input", str(paths["input"]), "--gt", str(paths["gt"]),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("junk.zip" if what == "junk_zip" else "nope") in err
