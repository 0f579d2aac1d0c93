"""Submission: restore a test set into a flat zip of RGB PNGs named as the inputs, checked before success."""
from __future__ import annotations

import importlib.util
import io
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from imgrestore.data.dacon import load_dataset
from imgrestore.models import create_model
from imgrestore.submission.predict import SubmissionError, check_submission, write_submission
from imgrestore.training.checkpoint import save_model


@pytest.fixture(scope="module")
def tiny_model():
    return create_model("unet", base_channels=4, depth=2).eval()


def test_submission_is_complete_and_checked(tiny_dacon, tiny_model, tmp_path):
    test = load_dataset(tiny_dacon).test
    out = write_submission(tiny_model, test, tmp_path / "submission.zip", progress=False)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert sorted(names) == sorted(test["name"])
        im = Image.open(io.BytesIO(zf.read(names[0])))
        assert im.mode == "RGB" and im.size == (64, 64) and im.format == "PNG"
    assert check_submission(out, test) == len(test)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def _zip(path, members):
    """members: name -> a Pillow image (stored as PNG) or raw bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, img in members.items():
            if not isinstance(img, bytes):
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                img = buf.getvalue()
            zf.writestr(name, img)
    return path


def test_check_lists_every_problem(tiny_dacon, tmp_path):
    test = load_dataset(tiny_dacon).test
    names = list(test["name"])
    members = {n: Image.new("RGB", (64, 64)) for n in names[2:]}
    members[names[2]] = Image.new("L", (64, 64))           # gray, not RGB
    members[names[3]] = Image.new("RGB", (32, 64))         # wrong size
    members["dir/" + names[0]] = Image.new("RGB", (64, 64))  # a folder
    members["EXTRA.png"] = Image.new("RGB", (64, 64))
    with pytest.raises(SubmissionError) as e:
        check_submission(_zip(tmp_path / "bad.zip", members), test)
    text = str(e.value)
    for expected in (f"{names[0]}: missing", f"{names[1]}: missing", f"{names[2]}: mode L, expected RGB",
                     f"{names[3]}: size (32, 64), its input is (64, 64)", "folders are not allowed",
                     "EXTRA.png: not a test input name"):
        assert expected in text


def test_failed_write_keeps_the_previous_zip(tiny_dacon, tiny_model, tmp_path):
    test = load_dataset(tiny_dacon).test
    out = tmp_path / "submission.zip"
    out.write_bytes(b"previous")
    broken = test.copy()
    broken.loc[0, "input_path"] = str(tmp_path / "missing.png")
    with pytest.raises(Exception, match="missing.png"):
        write_submission(tiny_model, broken, out, progress=False)
    assert out.read_bytes() == b"previous"


def test_predict_cli_from_a_checkpoint(tiny_dacon, tiny_model, tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.chdir(tmp_path)
    ckpt = save_model(tiny_model, tmp_path / "ckpt")
    argv = ["predict.py", "--model", str(ckpt), "--data", str(tiny_dacon), "--out", "sub.zip",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(__import__("pathlib").Path(__file__).parent.parent / "pipelines" / "predict.py"),
                       run_name="__main__")
    assert e.value.code == 0
    assert check_submission(tmp_path / "sub.zip", load_dataset(tiny_dacon).test) == 6
    assert "submission" in capsys.readouterr().out


def test_check_decodes_every_member(tiny_dacon, tmp_path, corrupt_png):
    test = load_dataset(tiny_dacon).test
    names = list(test["name"])
    members = {n: Image.new("RGB", (64, 64)) for n in names}
    members[names[0]] = corrupt_png(Image.new("RGB", (64, 64), (9, 99, 199)), "short")  # header and CRCs fine
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64)).save(jpeg, format="JPEG")
    members[names[1]] = jpeg.getvalue()
    with pytest.raises(SubmissionError) as e:
        check_submission(_zip(tmp_path / "bad.zip", members), test)
    text = str(e.value)
    assert f"{names[0]}: not a readable image (corrupt PNG: pixel data decodes to" in text
    assert f"{names[1]}: format JPEG, expected PNG" in text
    assert "2 problem(s)" in text
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(SubmissionError, match="junk.zip: not a valid zip file"):
        check_submission(tmp_path / "junk.zip", test)


# ----------------------------------------------------------------------------- pipelines/predict.py

PREDICT_PY = Path(__file__).resolve().parent.parent / "pipelines" / "predict.py"


@pytest.fixture(scope="module")
def predict_main():
    spec = importlib.util.spec_from_file_location("predict_cli", PREDICT_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    return save_model(tiny_model, tmp_path / "ckpt")


def test_predict_reads_the_test_side_only(tiny_dacon, checkpoint, tmp_path, predict_main):
    data = tmp_path / "data"
    shutil.copytree(tiny_dacon / "test_input", data / "test_input")
    shutil.copy(tiny_dacon / "test.csv", data / "test.csv")
    (data / "train.csv").write_text("junk\n")  # a broken train side must not matter
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "sub.zip"
    assert predict_main(["--model", str(checkpoint), "--data", str(data), "--out", str(out),
                         "--tracking-uri", uri]) == 0
    test = load_dataset(tiny_dacon).test
    assert check_submission(out, test) == len(test)

    # a plain folder of damaged gray PNGs
    pngs = tmp_path / "pngs"
    shutil.copytree(tiny_dacon / "test_input", pngs)
    out2 = tmp_path / "sub2.zip"
    assert predict_main(["--model", str(checkpoint), "--input", str(pngs), "--out", str(out2),
                         "--tracking-uri", uri]) == 0
    assert check_submission(out2, test) == len(test)


def test_predict_bad_input_is_an_error_line_and_status_2(tiny_dacon, checkpoint, tmp_path, predict_main,
                                                          capsys, corrupt_png):
    pngs = tmp_path / "pngs"
    shutil.copytree(tiny_dacon / "test_input", pngs)
    broken_model = tmp_path / "broken"
    shutil.copytree(checkpoint, broken_model)
    (broken_model / "model.json").write_text("{")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "sub.zip"
    cases = [
        (["--input", str(tmp_path / "nope")], "nope: folder not found"),
        (["--data", str(pngs)], "not a DACON folder (no test.csv, no test_input/); for a plain folder"),
        (["--input", str(pngs), "--out", str(pngs)], "is a folder"),
        (["--input", str(pngs), "--model", str(tmp_path)], "not a model checkpoint"),
        (["--input", str(pngs), "--model", str(broken_model)], "cannot load the model (JSONDecodeError"),
    ]
    for args, message in cases:
        argv = ["--model", str(checkpoint), "--out", str(out), "--tracking-uri", uri, *args]
        assert predict_main(argv) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (args, err)
    bad = sorted(pngs.iterdir())[1]
    bad.write_bytes(corrupt_png(Image.open(bad).copy(), "cut"))
    assert predict_main(["--model", str(checkpoint), "--input", str(pngs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad.name}: corrupt or unreadable image" in err and "Traceback" not in err
    assert not out.exists()


def test_hue_prior_decoding_keeps_the_gray_and_moves_the_hues(tiny_dacon, checkpoint, tiny_model, tmp_path,
                                                             predict_main, capsys):
    """A model carrying a hue prior: the same restorations, each pixel's gray unchanged, hues steered towards
    the training mean; the prior travels in the checkpoint; --hue-prior / --no-hue-prior replace or drop it."""
    import copy

    import numpy as np

    from imgrestore.data.io import read_rgb
    from imgrestore.models.hue_prior import HuePrior, hue_histogram
    from imgrestore.training.checkpoint import load_model, save_model

    ds = load_dataset(tiny_dacon)
    prior = HuePrior().fit(read_rgb(p) for p in ds.train["gt_path"])
    plain = write_submission(tiny_model, ds.test, tmp_path / "plain.zip", progress=False)
    decoding = copy.deepcopy(tiny_model)
    decoding.hue_prior = prior
    steered = write_submission(decoding, ds.test, tmp_path / "steered.zip", progress=False)
    from imgrestore.data.io import read_gray
    from imgrestore.data.masks import detect_mask
    from imgrestore.submission.predict import restore

    gray = read_gray(ds.test["input_path"].iloc[0])
    mask = detect_mask(gray)
    assert np.array_equal(restore(decoding, gray, mask), prior.transform(restore(tiny_model, gray, mask), mask))
    assert check_submission(steered, ds.test) == len(ds.test)

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-30))

    gains = []
    with zipfile.ZipFile(plain) as zp, zipfile.ZipFile(steered) as zs:
        for name in ds.test["name"]:
            a = Image.open(io.BytesIO(zp.read(name)))
            b = Image.open(io.BytesIO(zs.read(name)))
            assert np.array_equal(np.asarray(a.convert("L")), np.asarray(b.convert("L")))
            gains.append(corr(hue_histogram(np.asarray(b)), prior.histogram)
                         - corr(hue_histogram(np.asarray(a)), prior.histogram))
    assert min(gains) > 0.2  # the tiny model is gray: every image's hues come from the prior

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "cli.zip"
    assert predict_main(["--model", str(checkpoint), "--data", str(tiny_dacon), "--out", str(out),
                         "--tracking-uri", uri, "--hue-prior", str(tiny_dacon)]) == 0
    assert "hue prior" in capsys.readouterr().out
    with zipfile.ZipFile(out) as zc, zipfile.ZipFile(steered) as zs:
        assert all(zc.read(n) == zs.read(n) for n in ds.test["name"])  # the same decoding, seeded
    saved = save_model(decoding, tmp_path / "with_prior")
    assert load_model(saved).hue_prior.n_images == len(ds.train)
    for flags, same_as in (([], steered), (["--no-hue-prior"], plain)):
        out = tmp_path / f"cli{len(flags)}.zip"
        assert predict_main(["--model", str(saved), "--data", str(tiny_dacon), "--out", str(out),
                             "--tracking-uri", uri, *flags]) == 0
        assert ("the model's own" in capsys.readouterr().out) == (not flags)
        with zipfile.ZipFile(out) as zc, zipfile.ZipFile(same_as) as zs:
            assert all(zc.read(n) == zs.read(n) for n in ds.test["name"])
    out = tmp_path / "workers.zip"  # decoded in Ray tasks: the same zip
    assert predict_main(["--model", str(saved), "--data", str(tiny_dacon), "--out", str(out),
                         "--tracking-uri", uri, "--workers", "2"]) == 0
    with zipfile.ZipFile(out) as zc, zipfile.ZipFile(steered) as zs:
        assert all(zc.read(n) == zs.read(n) for n in ds.test["name"])
    missing = tmp_path / "cli2.zip"
    assert predict_main(["--model", str(checkpoint), "--data", str(tiny_dacon), "--out", str(missing),
                         "--tracking-uri", uri, "--hue-prior", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err and not missing.exists()


def test_parallel_decoding_writes_the_same_zip(tiny_dacon, tiny_model, tmp_path, ray_local, monkeypatch):
    """write_submission(parallel=True): the hue prior's decoding runs in Ray tasks, and the zip holds the same
    PNGs in the same order as the serial one; a task that fails fails the write and leaves no zip."""
    import copy

    from imgrestore.data.io import read_rgb
    from imgrestore.models.hue_prior import HuePrior
    from imgrestore.submission import predict

    ds = load_dataset(tiny_dacon)
    model = copy.deepcopy(tiny_model)
    model.hue_prior = HuePrior().fit(read_rgb(p) for p in ds.train["gt_path"])
    test = ds.test.iloc[[3, 0, 5, 1, 4, 2]]  # an order that is not the names': the zip keeps the frame's
    serial = write_submission(model, test, tmp_path / "serial.zip", progress=False)
    monkeypatch.setattr(predict, "DECODE_CHUNK", 1)  # six tasks, two in flight: the queue turns over
    monkeypatch.setattr(ray_local, "cluster_resources", lambda: {"CPU": 1})
    parallel = write_submission(model, test, tmp_path / "parallel.zip", progress=False, parallel=True)
    with zipfile.ZipFile(serial) as a, zipfile.ZipFile(parallel) as b:
        assert a.namelist() == b.namelist() == list(test["name"])
        assert all(a.read(n) == b.read(n) for n in a.namelist())

    def broken(prior, items):
        raise RuntimeError("decoding failed")

    monkeypatch.setattr(predict, "decode_chunk", broken)
    with pytest.raises(Exception, match="decoding failed"):
        write_submission(model, test, tmp_path / "failed.zip", progress=False, parallel=True)
    assert not (tmp_path / "failed.zip").exists()
