"""imgrestore.tuning.search without running a search: experiment folder names (unique, created exclusively,
ordered by time for `--resume latest`) and the error when no trial reported a score."""
from __future__ import annotations

import re

import pytest

from imgrestore.tuning import search
from imgrestore.tuning.search import best_checkpoint, experiment_name, latest_experiment


def restorable(root, name):
    (root / name).mkdir(parents=True)
    (root / name / "tuner.pkl").write_bytes(b"")  # what tune.Tuner.can_restore looks for
    return root / name


def test_experiment_names_differ_within_one_second():
    names = {experiment_name("demo", now=1_700_000_000) for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"demo-\d{8}-\d{6}-[0-9a-f]{6}", n) for n in names)


def test_experiment_folder_is_created_exclusively(tmp_path, monkeypatch):
    taken = "demo-20240101-120000-aaaaaa"
    (tmp_path / taken).mkdir()
    names = iter([taken, "demo-20240101-120000-bbbbbb"])
    monkeypatch.setattr(search, "experiment_name", lambda space, now=None: next(names))
    name, location = search._create_experiment_dir(str(tmp_path), "demo")
    assert name == "demo-20240101-120000-bbbbbb" and location == str(tmp_path / name)
    assert (tmp_path / name).is_dir()


def test_latest_experiment_orders_by_time_old_and_new_names(tmp_path):
    restorable(tmp_path, "demo-20240101-120000")             # a name from before the suffix
    restorable(tmp_path, "demo-20240101-115959-ffffff")
    newest = restorable(tmp_path, "demo-20240102-090000-000001")
    restorable(tmp_path, "demo-x-20250101-000000-abcdef")    # another space whose name starts the same
    (tmp_path / "demo-20991231-000000-abcdef").mkdir()       # not restorable: skipped
    assert latest_experiment(tmp_path, "demo") == newest
    newest.joinpath("tuner.pkl").unlink()
    assert latest_experiment(tmp_path, "demo") == tmp_path / "demo-20240101-120000"
    assert latest_experiment(tmp_path, "demo-x") == tmp_path / "demo-x-20250101-000000-abcdef"
    assert latest_experiment(tmp_path / "nothing", "demo") is None


class _Result:
    def __init__(self, error=None, metrics=None):
        self.error, self.metrics = error, metrics


class _Grid:
    """What best_checkpoint reads of a ResultGrid in which no trial reported the metric."""

    def __init__(self, results):
        self.results = results

    def get_best_result(self, metric, mode, scope):
        raise RuntimeError(f"No best trial found for the given metric: {metric}.")  # what Tune raises

    def __iter__(self):
        return iter(self.results)

    def __len__(self):
        return len(self.results)


def test_no_score_names_the_first_trial_error():
    trace = "Traceback (most recent call last):\n  File \"loop.py\", line 9\nValueError: bad lr"
    grid = _Grid([_Result(), _Result(RuntimeError(trace)), _Result(RuntimeError("second"))])
    with pytest.raises(RuntimeError) as e:
        best_checkpoint(grid, "score", "max")
    text = str(e.value)
    assert "no trial reported 'score': 2 of 3 trial(s) failed" in text
    assert trace in text and "second" not in text
    with pytest.raises(RuntimeError, match=r"no trial reported 'score' \(1 trial\(s\), none failed\)"):
        best_checkpoint(_Grid([_Result()]), "score", "max")
    oom = _Result(metrics={"out_of_memory": 1.0, "error": "out of memory in epoch 1 (...)"})
    with pytest.raises(RuntimeError, match=r"1 of 2 trial\(s\) ran out of memory; the first: out of memory in epoch 1"):
        best_checkpoint(_Grid([_Result(), oom]), "score", "max")


def test_resume_with_another_split_is_an_error(tmp_path):
    """The split the trials were validated on is fingerprinted with the experiment; a resume after preprocess
    re-ran on changed data stops before any trial runs."""
    import json

    from imgrestore.tracking import setup_tracking
    from imgrestore.tuning.space import SearchSpace

    exp = restorable(tmp_path / "runs", "demo-20240101-120000-aaaaaa")
    (exp / search.PARENT_FILE).write_text(json.dumps({"run_id": "x", "experiment_id": "0", "split_sha256": "0" * 64}))
    split = tmp_path / "train_preproc_1.csv"
    split.write_text("img_id,fold\nTRAIN_00000,0\n")
    space = SearchSpace(name="demo", config={"preproc_csv": str(split)})
    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ValueError, match="another train/validation split"):
        search.run_search(space, tmp_path, tmp_path / "runs", uri, resume=exp)


def test_resume_with_other_validation_settings_is_an_error(tmp_path):
    """The trials and the classical restorers must be scored on the same images, decoded alike: a resume whose
    space changed the validation settings (here the image cap) stops before any work, naming both."""
    import hashlib
    import json

    from imgrestore.tracking import setup_tracking
    from imgrestore.tuning.space import SearchSpace

    split = tmp_path / "train_preproc_1.csv"
    split.write_text("img_id,fold\nTRAIN_00000,0\n")
    space = SearchSpace(name="demo", config={"preproc_csv": str(split), "max_val_images": 80})
    digest = hashlib.sha256(search._split_text(space, tmp_path).encode()).hexdigest()
    exp = restorable(tmp_path / "runs", "demo-20240101-120000-aaaaaa")
    started = {**search._validation_of(space), "max_val_images": 40}
    (exp / search.PARENT_FILE).write_text(json.dumps({"run_id": "x", "experiment_id": "0", "split_sha256": digest,
                                                      "validation": started}))
    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ValueError, match="'max_val_images': 40.*the space now says.*'max_val_images': 80"):
        search.run_search(space, tmp_path, tmp_path / "runs", uri, resume=exp)
