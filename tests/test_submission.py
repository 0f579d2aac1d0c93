"""Submission: restore a test set into a flat zip of RGB PNGs named as the inputs, checked before success."""
from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from imgrestore.data.dacon import load_dataset
from imgrestore.models import create_model
from imgrestore.submission.predict import SubmissionError, check_submission, write_submission
from imgrestore.training.checkpoint import save_model


@pytest.fixture(scope="module")
def tiny_model():
    return create_model("ycbcr_unet", base_channels=4, depth=2).eval()


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
    with zipfile.ZipFile(path, "w") as zf:
        for name, img in members.items():
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            zf.writestr(name, buf.getvalue())
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
