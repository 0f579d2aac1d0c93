"""Read and validate a DACON-format dataset folder.

    root/
      train_input/   damaged grayscale PNGs (mode L)
      train_gt/      colour originals, same names and sizes
      train.csv      e.g. img_id,input_img_path,gt_img_path  (./train_input/TRAIN_00000.png)
      test_input/    damaged grayscale PNGs
      test.csv       e.g. img_id,input_img_path

The CSVs' path columns are found by their values, not their headers: a column whose values are image
paths under one of the three folders (relative like ``./train_input/x.png`` or bare names). With no CSV the
files are paired by name. Every image is fully decoded (a PNG's pixel data stream checked too), and every
problem found is reported at once, each with its file name, before any expensive work starts.

Prediction needs the test side only: `load_test_inputs` reads just that (a bad or absent train side does
not matter there), and `load_input_folder` takes a plain folder of damaged gray images.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from imgrestore.data.io import check_image_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOLDERS = ("train_input", "train_gt", "test_input")


class DatasetError(ValueError):
    """A dataset with problems; `problems` lists every one, each naming its file."""

    def __init__(self, root: Path, problems: list[str]):
        self.root, self.problems = Path(root), list(problems)
        shown = "\n  - ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{root}: {len(self.problems)} problem(s) in the dataset:\n  - {shown}{more}")


@dataclass
class DaconDataset:
    """File lists of a DACON dataset. `train`: name, input_path, gt_path. `test`: name, input_path."""

    root: Path
    train: pd.DataFrame
    test: pd.DataFrame

    def __repr__(self) -> str:
        return f"DaconDataset({self.root}, train={len(self.train)}, test={len(self.test)})"


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _folders_of(value: str, root: Path) -> tuple[str, ...]:
    """Which of FOLDERS a CSV cell may point into: the folder named in the path, or for a bare name
    every folder that holds a file of that name."""
    value = str(value).strip()
    if not value.lower().endswith(IMAGE_SUFFIXES):
        return ()
    parts = Path(value.replace("\\", "/")).parts
    for part in reversed(parts[:-1]):
        if part in FOLDERS:
            return (part,)
    if len(parts) == 1:
        return tuple(f for f in FOLDERS if (root / f / value).exists())
    return ()


_HINTS = {"train_gt": ("gt", "target", "label", "truth", "orig"), "train_input": ("input", "damaged", "src"),
          "test_input": ("input", "test")}


def find_path_columns(frame: pd.DataFrame, root: Path) -> dict[str, str]:
    """Map folder name -> the CSV column whose values (mostly) point into that folder.

    Bare file names can fit several folders (train_input/ and train_gt/ share names): such a tie is
    broken by the header (gt/target/label vs input), then by column order (input before gt).
    """
    fits: dict[str, list[str]] = {}
    for column in frame.columns:
        values = frame[column].dropna().astype(str)
        if values.empty:
            continue
        hits = values.map(lambda v: _folders_of(v, root))
        for folder in FOLDERS:
            if hits.map(lambda h: folder in h).mean() >= 0.5:
                fits.setdefault(folder, []).append(column)
    found: dict[str, str] = {}
    for folder in sorted(fits, key=lambda f: len(fits[f])):  # the least ambiguous folder first
        free = [c for c in fits[folder] if c not in found.values()]
        hinted = [c for c in free if any(h in str(c).lower() for h in _HINTS[folder])]
        if hinted or free:
            found[folder] = (hinted or free)[0]
    return found


def resolve_path(value: str, root: Path, folder: str) -> Path:
    value = str(value).strip().replace("\\", "/")
    path = Path(value)
    if path.is_absolute():
        return path
    if len(path.parts) == 1:
        return root / folder / path
    return (root / path).resolve() if ".." in path.parts else root / path


def _from_csv(csv: Path, root: Path, wanted: tuple[str, ...], required: bool,
              problems: list[str]) -> pd.DataFrame | None:
    columns_out = ["name", "input_path"] + (["gt_path"] if "train_gt" in wanted else [])
    try:
        frame = pd.read_csv(csv)
    except pd.errors.EmptyDataError:
        problems.append(f"{csv.name}: the file is empty (no header, no rows)")
        return None
    except Exception as e:  # pandas raises many types; the message is what matters
        problems.append(f"{csv.name}: cannot be read as CSV ({type(e).__name__}: {e})")
        return None
    if frame.empty:  # without rows no column can be recognised by its values: say what is really wrong
        if required:
            problems.append(f"{csv.name}: has a header but no rows (no {csv.stem} images listed)")
            return None
        return pd.DataFrame(columns=columns_out)
    columns = find_path_columns(frame, root)
    missing = [f for f in wanted if f not in columns]
    if missing:
        problems.append(f"{csv.name}: no column of paths into {', '.join(f + '/' for f in missing)} "
                        f"(columns: {', '.join(map(str, frame.columns))})")
        return None
    out = pd.DataFrame()
    for folder in wanted:
        paths = [resolve_path(v, root, folder) for v in frame[columns[folder]]]
        key = "input_path" if folder.endswith("input") else "gt_path"
        out[key] = [str(p) for p in paths]
    out.insert(0, "name", [Path(p).name for p in out["input_path"]])
    return out[columns_out]


def _pair_by_name(root: Path, split: str, problems: list[str]) -> pd.DataFrame:
    inputs = _list_images(root / f"{split}_input")
    out = pd.DataFrame({"name": [p.name for p in inputs], "input_path": [str(p) for p in inputs]})
    if split == "train":
        gts = {p.name for p in _list_images(root / "train_gt")}
        out["gt_path"] = [str(root / "train_gt" / n) for n in out["name"]]
        for name in sorted(gts - set(out["name"])):
            problems.append(f"train_gt/{name}: no train_input image of that name")
    return out


def _check_files(frame: pd.DataFrame, root: Path, split: str, problems: list[str]) -> None:
    for column in ("name",):
        dup = frame[column][frame[column].duplicated()]
        for name in sorted(set(dup)):
            problems.append(f"{split}: duplicate image name {name}")

    def header(path: str) -> tuple[str, str | None, tuple | None]:
        rel = os.path.relpath(path, root)
        if not os.path.isfile(path):
            return rel, "file not found", None
        try:
            return rel, None, check_image_file(path)  # a full decode: corrupt pixel data fails here, not in training
        except (ValueError, OSError) as e:
            return rel, f"corrupt or unreadable image ({e})", None

    paths = list(frame["input_path"]) + (list(frame["gt_path"]) if "gt_path" in frame else [])
    with ThreadPoolExecutor(max_workers=8) as pool:
        info = dict(zip(paths, pool.map(header, paths)))
    for _, row in frame.iterrows():
        rel, err, meta = info[row["input_path"]]
        if err:
            problems.append(f"{rel}: {err}")
        elif meta[0] != "L":
            problems.append(f"{rel}: input is not grayscale (mode {meta[0]}, expected L)")
        if "gt_path" in row:
            grel, gerr, gmeta = info[row["gt_path"]]
            if gerr:
                problems.append(f"{grel}: {gerr}")
            elif meta and gmeta and meta[1] != gmeta[1]:
                problems.append(f"{rel}: size {meta[1][0]}x{meta[1][1]} differs from its ground truth "
                                f"{grel} ({gmeta[1][0]}x{gmeta[1][1]})")


def _load_split(root: Path, split: str, required: bool, problems: list[str]) -> pd.DataFrame | None:
    """One split's file list from its CSV, or by name without one; its files checked. None if unusable."""
    wanted = ("train_input", "train_gt") if split == "train" else ("test_input",)
    csv = root / f"{split}.csv"
    frame = _from_csv(csv, root, wanted, required, problems) if csv.is_file() else _pair_by_name(root, split, problems)
    if frame is None:
        return None
    if frame.empty and required:
        problems.append(f"{split}: no images found (looked for {csv.name} and {split}_input/)")
    _check_files(frame, root, split, problems)
    return frame.reset_index(drop=True)


def _folder_or_error(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: {'not a folder' if root.exists() else 'folder not found'}"])
    return root


def load_dataset(root: str | os.PathLike, require_test: bool = True) -> DaconDataset:
    """Read `root` as a DACON dataset and validate every file; raise DatasetError listing all problems."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: dataset folder not found"])
    problems: list[str] = []
    train = _load_split(root, "train", True, problems)
    test = _load_split(root, "test", require_test, problems)
    if problems:
        raise DatasetError(root, problems)
    return DaconDataset(root, train, test)


def load_test_inputs(root: str | os.PathLike) -> pd.DataFrame:
    """The test side of a DACON folder (test.csv, or test_input/ by name), validated: name, input_path.

    The train side is not read at all: prediction does not need it, so neither its absence nor its
    problems may stop a prediction.
    """
    root = _folder_or_error(root)
    problems: list[str] = []
    test = _load_split(root, "test", True, problems)
    if problems:
        raise DatasetError(root, problems)
    return test


def load_input_folder(folder: str | os.PathLike) -> pd.DataFrame:
    """A plain folder of damaged gray images (no DACON layout), validated: name, input_path."""
    folder = _folder_or_error(folder)
    images = _list_images(folder)
    frame = pd.DataFrame({"name": [p.name for p in images], "input_path": [str(p) for p in images]})
    problems: list[str] = []
    if frame.empty:
        problems.append(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    _check_files(frame, folder, "input", problems)
    if problems:
        raise DatasetError(folder, problems)
    return frame
