"""Two runs never overwrite each other's submission silently: the zip names the run that wrote it, and the
command-line tools replace an existing --out only if imgrestore wrote it (or --overwrite is given)."""
from __future__ import annotations

import importlib.util
import logging
import zipfile
from pathlib import Path

import pytest

from imgrestore.data.dacon import load_dataset
from imgrestore.models import create_model
from imgrestore.submission.predict import (
    check_out,
    check_submission,
    submission_comment,
    write_submission,
    zip_writer,
)
from imgrestore.training.checkpoint import save_model

ROOT = Path(__file__).resolve().parent.parent


def load_cli(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli_outputs", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model():
    return create_model("unet", base_channels=4, depth=2).eval()


def test_the_zip_names_the_run_that_wrote_it(tiny_dacon, tiny_model, tmp_path):
    test = load_dataset(tiny_dacon).test
    out = write_submission(tiny_model, test, tmp_path / "a.zip", progress=False, comment=submission_comment("run A"))
    assert zip_writer(out).startswith("imgrestore submission written by run A (pid ")
    assert check_submission(out, test) == len(test)  # the comment does not disturb the check
    default = write_submission(tiny_model, test, tmp_path / "b.zip", progress=False)
    assert zip_writer(default).startswith("imgrestore submission written by ")  # the running script by default


def test_replacing_a_zip_says_whose_it_was(tiny_dacon, tiny_model, tmp_path, capsys, caplog):
    test = load_dataset(tiny_dacon).test
    out = tmp_path / "submission.zip"
    write_submission(tiny_model, test, out, comment=submission_comment("run A"))
    assert "replacing" not in capsys.readouterr().out
    write_submission(tiny_model, test, out, comment=submission_comment("run B"))
    printed = capsys.readouterr().out
    assert f"replacing {out}: imgrestore submission written by run A" in printed
    assert "written by run B" in zip_writer(out)
    with caplog.at_level(logging.WARNING):  # progress=False: logged instead of printed
        write_submission(tiny_model, test, out, progress=False, comment=submission_comment("run C"))
    assert "written by run B" in caplog.text and "written by run C" in zip_writer(out)


def test_check_out_rules(tmp_path):
    check_out(tmp_path / "none.zip")  # nothing there
    ours = tmp_path / "ours.zip"
    with zipfile.ZipFile(ours, "w") as zf:
        zf.comment = submission_comment("run A").encode()
    check_out(ours)  # imgrestore's own zip: replaced
    foreign_zip = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign_zip, "w") as zf:
        zf.writestr("x.png", b"x")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for other in (foreign_zip, notes):
        with pytest.raises(FileExistsError, match="not a submission zip written by imgrestore.*--overwrite"):
            check_out(other)
        check_out(other, overwrite=True)
    with pytest.raises(ValueError, match="is a folder"):
        check_out(tmp_path, overwrite=True)


def test_predict_refuses_a_foreign_out_unless_overwrite(tiny_dacon, tiny_model, tmp_path, capsys):
    main = load_cli("predict").main
    ckpt = save_model(tiny_model, tmp_path / "ckpt")
    out = tmp_path / "sub.zip"
    out.write_text("someone else's file")
    args = ["--model", str(ckpt), "--data", str(tiny_dacon), "--out", str(out),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err
    assert out.read_text() == "someone else's file"

    assert main([*args, "--overwrite"]) == 0
    assert f"replacing {out}: a file imgrestore did not write" in capsys.readouterr().out
    assert zip_writer(out).startswith(f"imgrestore submission written by predict.py --model {ckpt}")

    assert main(args) == 0  # now it is imgrestore's zip: replaced, and said so
    assert f"replacing {out}: imgrestore submission written by predict.py" in capsys.readouterr().out


def test_tune_refuses_a_foreign_out_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "submission.zip").write_text("not ours")
    assert load_cli("tune").main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: submission.zip: exists and is not a submission zip written by imgrestore")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # nothing started


def test_tune_resume_command_keeps_overwrite():
    tune = load_cli("tune")
    args = tune.parse_args(["--out", "x.zip", "--overwrite"])
    assert tune._resume_args(args, "runs/demo-1")[-3:] == ["--out", "x.zip", "--overwrite"]
