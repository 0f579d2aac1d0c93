"""Content hashes and the embedding cache, both Parquet files in one cache folder.

* ``file_hashes.parquet``: (path, size, mtime_ns) -> sha256, so an unchanged file is not read again to hash it
  (a file rewritten in place gets a new mtime and is re-hashed).
* ``emb-<spec slug>-<key hash>.parquet``: sha256 -> embedding for one embedder. The key is the embedder spec,
  plus, for a CLIP model in a local folder, the names, sizes and mtimes of the folder's files, so a replaced
  model never reuses old vectors.

Writes go to a temporary name and are renamed into place (`imgrestore.data.io.atomic_path`).
"""
from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imgrestore.data.io import atomic_path

HASH_INDEX = "file_hashes.parquet"


def default_cache_dir() -> Path:
    base = os.environ.get("IMGRESTORE_CACHE") or Path.home() / ".cache" / "imgrestore"
    return Path(base) / "embeddings"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(paths: list[str], cache_dir: str | os.PathLike | None = None) -> list[str]:
    """sha256 of each file's bytes, reusing the hash of files whose (size, mtime) did not change."""
    stats = []
    for p in paths:
        st = os.stat(p)
        stats.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    index: dict[tuple, str] = {}
    index_path = Path(cache_dir) / HASH_INDEX if cache_dir else None
    if index_path and index_path.is_file():
        old = pq.read_table(index_path).to_pandas()
        index = {(p, int(s), int(m)): h for p, s, m, h in old[["path", "size", "mtime_ns", "sha256"]].itertuples(
            index=False)}
    todo = [i for i, key in enumerate(stats) if key not in index]
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            for i, digest in zip(todo, pool.map(lambda i: file_sha256(stats[i][0]), todo)):
                index[stats[i]] = digest
        if index_path:
            frame = pd.DataFrame([(p, s, m, h) for (p, s, m), h in index.items()],
                                 columns=["path", "size", "mtime_ns", "sha256"])
            current = {k[0]: k for k in stats}  # drop stale entries of the paths just seen
            frame = frame[[current.get(p, (p, s, m)) == (p, s, m) for p, s, m in
                           frame[["path", "size", "mtime_ns"]].itertuples(index=False)]]
            with atomic_path(index_path) as tmp:
                pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    return [index[key] for key in stats]


def cache_key(spec: str) -> str:
    """What identifies an embedder's vectors: the spec, plus the files of a local CLIP folder."""
    key = spec
    if spec.startswith("clip:") and Path(spec[5:]).is_dir():
        folder = Path(spec[5:])
        parts = sorted(f"{f.relative_to(folder)}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                       for f in folder.rglob("*") if f.is_file())
        key += "|" + ";".join(parts)
    return key


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec)[-60:].strip("_")


def to_matrix(vectors) -> np.ndarray:
    vectors = list(vectors)
    if not vectors:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(v, np.float32) for v in vectors])


def _table(columns: dict, matrix: np.ndarray, metadata: dict[str, str]) -> pa.Table:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    dim = matrix.shape[1] if matrix.ndim == 2 else 0
    emb = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim)
    table = pa.table({**{k: pa.array(v) for k, v in columns.items()}, "embedding": emb})
    return table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in metadata.items()})


def _matrix(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


class EmbeddingCache:
    """sha256 -> vector for one embedder spec, stored in one Parquet file under `cache_dir`."""

    def __init__(self, cache_dir: str | os.PathLike, spec: str):
        self.spec = spec
        key = hashlib.sha256(cache_key(spec).encode()).hexdigest()[:12]
        self.path = Path(cache_dir) / f"emb-{_slug(spec)}-{key}.parquet"

    def load(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        table = pq.read_table(self.path)
        return dict(zip(table.column("sha256").to_pylist(), _matrix(table)))

    def add(self, shas: list[str], matrix: np.ndarray) -> None:
        if not shas:
            return
        merged = self.load()
        merged.update(zip(shas, np.asarray(matrix, np.float32)))
        keys = sorted(merged)
        with atomic_path(self.path) as tmp:
            pq.write_table(_table({"sha256": keys}, to_matrix(merged[k] for k in keys), {"embedder": self.spec}), tmp)


def save_embeddings(frame: pd.DataFrame, path: str | os.PathLike, spec: str) -> None:
    """Write an `embed_images` result (name, path, sha256, embedding) as Parquet, with the embedder."""
    cols = {c: list(frame[c].astype(str)) for c in ("name", "path", "sha256")}
    cols["embedder"] = [spec] * len(frame)
    with atomic_path(path) as tmp:
        pq.write_table(_table(cols, to_matrix(frame["embedding"]) if len(frame) else np.zeros((0, 1)),
                              {"embedder": spec}), tmp)


def load_embeddings(path: str | os.PathLike) -> pd.DataFrame:
    table = pq.read_table(path)
    frame = table.drop(["embedding"]).to_pandas()
    frame["embedding"] = list(_matrix(table))
    meta = table.schema.metadata or {}
    frame.attrs["embedder"] = meta.get(b"embedder", b"").decode()
    return frame
