"""The DACON data layer: CSV path columns found by value, pairing by name, every bad-input case."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgrestore.data.dacon import DatasetError, find_path_columns, load_dataset, load_input_folder, load_test_inputs


def make(root, n_train=3, n_test=2, size=(32, 24), csv=True, bare=False):
    rng = np.random.default_rng(0)
    for d in ("train_input", "train_gt", "test_input"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train):
        name = f"TRAIN_{i:05d}.png"
        gt = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(gt).save(root / "train_gt" / name)
        Image.fromarray(gt).convert("L").save(root / "train_input" / name)
        rows.append(name)
    tests = []
    for i in range(n_test):
        name = f"TEST_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(root / "test_input" / name)
        tests.append(name)
    if csv:
        fmt = (lambda d, n: n) if bare else (lambda d, n: f"./{d}/{n}")
        pd.DataFrame({"img_id": [r[:-4] for r in rows], "input_img_path": [fmt("train_input", r) for r in rows],
                      "gt_img_path": [fmt("train_gt", r) for r in rows]}).to_csv(root / "train.csv", index=False)
        pd.DataFrame({"img_id": [t[:-4] for t in tests], "input_img_path": [fmt("test_input", t) for t in tests]}
                     ).to_csv(root / "test.csv", index=False)
    return root


@pytest.mark.parametrize("bare", [False, True])
def test_reads_csv_paths_relative_or_bare(tmp_path, bare):
    ds = load_dataset(make(tmp_path, bare=bare))
    assert len(ds.train) == 3 and len(ds.test) == 2
    assert ds.train["name"].tolist() == [f"TRAIN_{i:05d}.png" for i in range(3)]
    assert all(p.endswith(n) for p, n in zip(ds.train["gt_path"], ds.train["name"]))
    assert "train_gt" in ds.train["gt_path"][0]


def test_path_columns_found_by_value_not_header(tmp_path):
    root = make(tmp_path)
    frame = pd.read_csv(root / "train.csv").rename(columns={"input_img_path": "a", "gt_img_path": "b"})
    frame = frame[["b", "img_id", "a"]]  # odd names, odd order
    assert find_path_columns(frame, root) == {"train_gt": "b", "train_input": "a"}
    frame.to_csv(root / "train.csv", index=False)
    assert len(load_dataset(root).train) == 3


def test_pairs_by_name_without_csv(tmp_path):
    ds = load_dataset(make(tmp_path, csv=False))
    assert len(ds.train) == 3 and len(ds.test) == 2


def test_every_problem_is_reported_with_its_file(tmp_path):
    root = make(tmp_path, csv=False)
    (root / "train_gt" / "TRAIN_00000.png").unlink()                          # missing gt
    Image.new("RGB", (32, 24)).save(root / "train_input" / "TRAIN_00001.png")   # input not grayscale
    Image.new("RGB", (16, 16)).save(root / "train_gt" / "TRAIN_00002.png")      # size differs
    (root / "test_input" / "TEST_000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    text = str(e.value)
    assert "train_gt/TRAIN_00000.png: file not found" in text
    assert "train_input/TRAIN_00001.png: input is not grayscale" in text
    assert "TRAIN_00002.png: size 32x24 differs" in text
    assert "test_input/TEST_000.png: corrupt or unreadable" in text
    assert len(e.value.problems) == 4


def test_truncated_png_is_a_clear_error(tmp_path):
    root = make(tmp_path)
    path = root / "train_gt" / "TRAIN_00001.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="TRAIN_00001.png: corrupt or unreadable"):
        load_dataset(root)


def test_duplicates_and_test_rows_without_input(tmp_path):
    root = make(tmp_path)
    train = pd.read_csv(root / "train.csv")
    pd.concat([train, train.iloc[[0]]]).to_csv(root / "train.csv", index=False)
    test = pd.read_csv(root / "test.csv")
    test.loc[len(test)] = ["TEST_999", "./test_input/TEST_999.png"]
    test.to_csv(root / "test.csv", index=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    assert "train: duplicate image name TRAIN_00000.png" in str(e.value)
    assert "test_input/TEST_999.png: file not found" in str(e.value)


def test_csv_without_path_columns(tmp_path):
    root = make(tmp_path)
    pd.DataFrame({"id": [1, 2]}).to_csv(root / "test.csv", index=False)
    with pytest.raises(DatasetError, match=r"test.csv: no column of paths into test_input/"):
        load_dataset(root)


def test_missing_folder_and_gt_without_input(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")
    root = make(tmp_path / "d", csv=False)
    shutil.copy(root / "train_gt" / "TRAIN_00000.png", root / "train_gt" / "EXTRA.png")
    with pytest.raises(DatasetError, match="train_gt/EXTRA.png: no train_input image"):
        load_dataset(root)


def test_corrupt_pixel_data_behind_valid_crcs_is_found(tmp_path, corrupt_png):
    """Headers and CRCs fine, pixel data not: every such file is reported at once, by path."""
    root = make(tmp_path)
    bad = {"train_input/TRAIN_00000.png": "short", "train_gt/TRAIN_00001.png": "cut",
           "test_input/TEST_001.png": "long"}
    for rel, kind in bad.items():
        path = root / rel
        with Image.open(path) as im:
            path.write_bytes(corrupt_png(im.copy(), kind))
        with Image.open(path) as im:
            im.verify()  # what a header/CRC check sees: nothing wrong
    with Image.open(root / "train_input/TRAIN_00000.png") as im:
        im.load()  # and Pillow's decode silently fills the missing half with zeros
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    assert len(e.value.problems) == 3
    text = str(e.value)
    assert str(root) in text
    assert "train_input/TRAIN_00000.png: corrupt or unreadable image (corrupt PNG: pixel data decodes to" in text
    assert "train_gt/TRAIN_00001.png: corrupt or unreadable image (corrupt PNG: pixel data stream is truncated" in text
    assert "test_input/TEST_001.png: corrupt or unreadable image" in text


def test_csv_with_a_header_and_no_rows(tmp_path):
    root = make(tmp_path)
    (root / "train.csv").write_text("img_id,input_img_path,gt_img_path\n")
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    assert e.value.problems == ["train.csv: has a header but no rows (no train images listed)"]
    (root / "train.csv").write_text("")
    with pytest.raises(DatasetError, match="train.csv: the file is empty"):
        load_dataset(root)


def test_header_only_test_csv_is_fine_when_the_test_side_is_optional(tmp_path):
    root = make(tmp_path)
    (root / "test.csv").write_text("img_id,input_img_path\n")
    assert len(load_dataset(root, require_test=False).test) == 0
    with pytest.raises(DatasetError, match="test.csv: has a header but no rows"):
        load_dataset(root)


def test_test_inputs_alone_ignore_the_train_side(tmp_path):
    root = make(tmp_path)
    (root / "train.csv").write_text("garbage\n")
    (root / "train_gt" / "TRAIN_00000.png").write_bytes(b"broken")
    with pytest.raises(DatasetError):
        load_dataset(root)
    test = load_test_inputs(root)
    assert test["name"].tolist() == ["TEST_000.png", "TEST_001.png"] and list(test) == ["name", "input_path"]
    shutil.rmtree(root / "train_input")
    shutil.rmtree(root / "train_gt")
    (root / "test.csv").unlink()  # test_input/ by name
    assert len(load_test_inputs(root)) == 2


def test_test_inputs_problems(tmp_path):
    with pytest.raises(DatasetError, match="folder not found"):
        load_test_inputs(tmp_path / "nope")
    root = make(tmp_path / "d", csv=False)
    Image.new("RGB", (32, 24)).save(root / "test_input" / "TEST_000.png")
    with pytest.raises(DatasetError, match="test_input/TEST_000.png: input is not grayscale"):
        load_test_inputs(root)
    shutil.rmtree(root / "test_input")
    with pytest.raises(DatasetError, match=r"test: no images found \(looked for test.csv and test_input/\)"):
        load_test_inputs(root)


def test_a_plain_folder_of_inputs(tmp_path, corrupt_png):
    root = make(tmp_path / "d", csv=False)
    frame = load_input_folder(root / "test_input")
    assert frame["name"].tolist() == ["TEST_000.png", "TEST_001.png"]
    folder = tmp_path / "inputs"
    folder.mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_input_folder(folder)
    Image.new("L", (8, 8)).save(folder / "ok.png")
    Image.new("RGB", (8, 8)).save(folder / "colour.png")
    (folder / "bad.png").write_bytes(corrupt_png(Image.new("L", (8, 8)), "short"))
    (folder / "notes.txt").write_text("not an image: ignored")
    with pytest.raises(DatasetError) as e:
        load_input_folder(folder)
    assert sorted(p.split(":")[0] for p in e.value.problems) == ["bad.png", "colour.png"]
