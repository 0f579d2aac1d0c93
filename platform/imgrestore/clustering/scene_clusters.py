"""Scene clusters: UMAP to a low-dimensional map, then HDBSCAN on the map (the original pipeline's recipe).

Backends, same parameters on both:

* ``"cuml"``: RAPIDS cuML (``cuml.manifold.UMAP``, ``cuml.cluster.HDBSCAN``), on the GPU;
* ``"cpu"``: umap-learn + hdbscan;
* ``"auto"`` (default): cuML when it imports and a GPU is visible, else cpu.

Forcing ``"cuml"`` where it cannot run raises a RuntimeError; nothing falls back silently, and the backend used
is logged and kept in ``backend_``. cuML is asked for NumPy output explicitly (``output_type="numpy"`` and
``cuml.using_output_type("numpy")``): its default follows the input type, and a CuPy array leaking out would
break ``np.asarray`` and pickling to a CPU-only driver. Where this runs (a Ray task on a GPU node or not) is
decided by :mod:`imgrestore.clustering.placement`.

Small inputs: UMAP needs ``n_neighbors < n_samples`` and a few more points than output dimensions, HDBSCAN a
cluster size no larger than the data. ``n_neighbors`` is clipped to ``n - 1`` (at least 2) and
``min_cluster_size`` to ``n`` (at least 2); with fewer than ``n_components + 2`` points UMAP is skipped (a PCA
map instead) and every point is noise. Each adjustment is logged and listed in ``adjustments_``.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)
BACKENDS = ("auto", "cpu", "cuml")


def cuml_available() -> tuple[bool, str]:
    """(True, '') when cuML imports and sees a GPU, else (False, why)."""
    try:
        import cuml  # noqa: F401
    except Exception as e:  # ImportError, or a CUDA library error at import time
        return False, f"RAPIDS cuML is not importable ({type(e).__name__}: {e})"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "cuML imports but no GPU is visible"
    except Exception as e:
        return False, f"cuML imports but no GPU is usable ({type(e).__name__}: {e})"
    return True, ""


def resolve_backend(backend: str = "auto") -> str:
    """'auto' -> 'cuml' or 'cpu'; a forced 'cuml' that cannot run raises RuntimeError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    ok, why = cuml_available()
    if backend == "cuml" and not ok:
        raise RuntimeError(f"backend='cuml' was requested but cannot run: {why}. Install RAPIDS cuML on a GPU "
                           "machine (pip install 'imgrestore[gpu]', i.e. cuml-cu12) or use backend='cpu' / 'auto'.")
    return "cuml" if ok else "cpu"


def cpu_backend():
    """umap-learn's ``UMAP`` and hdbscan's ``HDBSCAN``, with numba's on-disk cache turned on for the numba kernels
    of umap-learn (and of pynndescent, which it uses above 4096 points).

    Why: umap-learn declares almost none of its kernels ``cache=True``, so every new process that clusters (each
    pipeline run, each Ray worker, each subprocess of the tests) compiled them again: ~16 s on 2 cores, most of a
    small dataset's clustering. ``Dispatcher.enable_caching`` is what ``cache=True`` does: the first process
    writes the machine code next to the kernels' source (``__pycache__``, or numba's user-wide cache where that is
    not writable, or ``$NUMBA_CACHE_DIR``), later ones load it (~1 s). numba keys each entry on the source file's
    stamp and the CPU, so an upgraded umap-learn or another machine compiles afresh; the maps are the same bit for
    bit (docs/benchmarks.md, "UMAP's numba kernels: compiled once, not in every process").
    """
    import sys

    from hdbscan import HDBSCAN
    from numba.core.dispatcher import Dispatcher
    from umap import UMAP

    for name in [m for m in sys.modules if m.split(".")[0] in ("umap", "pynndescent")]:
        for value in list(vars(sys.modules[name]).values()):
            if isinstance(value, Dispatcher) and value.stats.cache_path is None:
                try:
                    value.enable_caching()
                except RuntimeError as e:  # numba found no writable cache folder: compile as shipped, say why
                    log.warning("scene clusters: numba cannot cache umap-learn's kernels (%s); each new process "
                                "compiles them (~16 s). Set NUMBA_CACHE_DIR to a writable folder.", e)
                    return UMAP, HDBSCAN
    return UMAP, HDBSCAN


def _numpy_out(backend: str):
    """Context in which cuML returns NumPy arrays (a no-op for the CPU libraries)."""
    if backend != "cuml":
        return contextlib.nullcontext()
    import cuml

    return cuml.using_output_type("numpy")


class SceneClusterer:
    """UMAP(n_neighbors, min_dist, n_components, random_state) -> HDBSCAN(min_cluster_size), sklearn style.

    After ``fit(X)``: ``embedding_`` (n, n_components) map, ``labels_`` (-1 = noise), ``backend_``,
    ``params_`` (the parameters actually used) and ``adjustments_`` (what small-n handling changed).
    """

    def __init__(self, n_neighbors: int = 5, min_dist: float = 0.0, n_components: int = 2,
                 random_state: int | None = 42, min_cluster_size: int = 5, min_samples: int | None = None,
                 metric: str = "euclidean", backend: str = "auto"):
        self.n_neighbors, self.min_dist, self.n_components = n_neighbors, min_dist, n_components
        self.random_state, self.min_cluster_size, self.min_samples = random_state, min_cluster_size, min_samples
        self.metric, self.backend = metric, backend

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("n_neighbors", "min_dist", "n_components", "random_state",
                                              "min_cluster_size", "min_samples", "metric", "backend")}

    # -- fitting ---------------------------------------------------------------------------------------
    def _effective_params(self, n: int) -> dict:
        p = self.get_params()
        self.adjustments_ = []
        nn = max(2, min(self.n_neighbors, n - 1))
        if nn != self.n_neighbors:
            self.adjustments_.append(f"n_neighbors {self.n_neighbors} -> {nn} ({n} points)")
        mcs = max(2, min(self.min_cluster_size, n))
        if mcs != self.min_cluster_size:
            self.adjustments_.append(f"min_cluster_size {self.min_cluster_size} -> {mcs} ({n} points)")
        ms = None if self.min_samples is None else max(1, min(self.min_samples, n - 1))
        p.update(n_neighbors=nn, min_cluster_size=mcs, min_samples=ms)
        return p

    def fit(self, X) -> "SceneClusterer":
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"SceneClusterer.fit needs a non-empty (n_samples, n_features) array, got {X.shape}")
        n = len(X)
        self.backend_ = resolve_backend(self.backend)
        self.params_ = p = self._effective_params(n)
        self.n_features_in_ = X.shape[1]
        self._X = X
        if n < self.n_components + 2:
            self.adjustments_ = [f"{n} points (< n_components + 2): too few for UMAP/HDBSCAN, "
                                 "PCA map instead and every point noise"]
            for note in self.adjustments_:
                log.warning("scene clusters: %s", note)
            from sklearn.decomposition import PCA

            k = max(1, min(self.n_components, n, X.shape[1]))
            self.reducer_ = PCA(n_components=k).fit(X) if n > 1 else None
            self.embedding_ = self._pca_map(X)
            self.labels_ = np.full(n, -1, dtype=int)
            self.clusterer_ = None
            return self
        for note in self.adjustments_:
            log.warning("scene clusters: %s", note)
        log.info("scene clusters: backend=%s, UMAP(n_neighbors=%d, min_dist=%s, n_components=%d, random_state=%s)"
                 " -> HDBSCAN(min_cluster_size=%d) on %d points", self.backend_, p["n_neighbors"], p["min_dist"],
                 p["n_components"], p["random_state"], p["min_cluster_size"], n)
        umap_kw = dict(n_neighbors=p["n_neighbors"], min_dist=p["min_dist"], n_components=p["n_components"],
                       random_state=p["random_state"], metric=p["metric"])
        hdb_kw = dict(min_cluster_size=p["min_cluster_size"], min_samples=p["min_samples"], prediction_data=True)
        if self.backend_ == "cuml":
            from cuml.cluster import HDBSCAN
            from cuml.manifold import UMAP

            umap_kw["output_type"] = hdb_kw["output_type"] = "numpy"
        else:
            UMAP, HDBSCAN = cpu_backend()
        with warnings.catch_warnings(), _numpy_out(self.backend_):
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")  # random_state => 1 thread
            warnings.filterwarnings("ignore", message=".*not fully connected.*")  # separate scenes: expected
            self.reducer_ = UMAP(**umap_kw)
            self.embedding_ = np.asarray(self.reducer_.fit_transform(X), dtype=np.float32)
            self.clusterer_ = HDBSCAN(**hdb_kw).fit(self.embedding_)
            self.labels_ = np.asarray(self.clusterer_.labels_).astype(int)
        return self

    def fit_predict(self, X) -> np.ndarray:
        return self.fit(X).labels_

    def _pca_map(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), self.n_components), np.float32)
        if self.reducer_ is not None:
            z = self.reducer_.transform(X)
            out[:, : z.shape[1]] = z
        return out

    # -- new points ------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "labels_"):
            raise RuntimeError("SceneClusterer is not fitted: call fit(X) first")

    def transform(self, X_new) -> np.ndarray:
        """Place new points on the fitted map (n_new, n_components)."""
        self._check_fitted()
        X_new = np.ascontiguousarray(X_new, dtype=np.float32)
        if X_new.ndim != 2 or X_new.shape[1] != self.n_features_in_:
            raise ValueError(f"expected (n, {self.n_features_in_}) features, got {X_new.shape}")
        if len(X_new) == 0:
            return np.zeros((0, self.n_components), np.float32)
        if self.clusterer_ is None:
            return self._pca_map(X_new)
        with warnings.catch_warnings(), _numpy_out(self.backend_):
            warnings.simplefilter("ignore")
            return np.asarray(self.reducer_.transform(X_new), dtype=np.float32)

    def predict(self, X_new) -> np.ndarray:
        """Cluster of each new point (-1 = noise): HDBSCAN approximate_predict on the point's place in the map."""
        return self.predict_embedded(self.transform(X_new))

    def predict_embedded(self, emb: np.ndarray) -> np.ndarray:
        """`predict` for points already placed on the map (the output of `transform`)."""
        emb = np.asarray(emb, dtype=np.float32)
        if len(emb) == 0 or self.clusterer_ is None or self.labels_.max() < 0:
            return np.full(len(emb), -1, dtype=int)
        if self.backend_ == "cpu":
            import hdbscan

            labels, _ = hdbscan.approximate_predict(self.clusterer_, emb)
            return np.asarray(labels).astype(int)
        try:
            from cuml.cluster.hdbscan import approximate_predict
        except ImportError:
            approximate_predict = None
        if approximate_predict is not None:
            with _numpy_out("cuml"):
                labels, _ = approximate_predict(self.clusterer_, emb)
            return np.asarray(labels).astype(int)
        return self.nearest_labels(emb)

    def nearest_labels(self, emb: np.ndarray) -> np.ndarray:
        """Label of the nearest clustered (non-noise) training point in the map."""
        mask = self.labels_ >= 0
        ref, lab = self.embedding_[mask], self.labels_[mask]
        from sklearn.neighbors import NearestNeighbors

        idx = NearestNeighbors(n_neighbors=1).fit(ref).kneighbors(emb, return_distance=False)[:, 0]
        return lab[idx].astype(int)


def cluster_summary(labels: np.ndarray) -> dict:
    """Counts for a label vector: clusters, noise share, size distribution."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, int)
    sizes = sizes[sizes > 0]
    n = len(labels)
    return {
        "n_points": int(n),
        "n_clusters": int(len(sizes)),
        "n_noise": int((labels < 0).sum()),
        "noise_share": float((labels < 0).mean()) if n else 0.0,
        "cluster_size_min": int(sizes.min()) if len(sizes) else 0,
        "cluster_size_median": float(np.median(sizes)) if len(sizes) else 0.0,
        "cluster_size_max": int(sizes.max()) if len(sizes) else 0,
        "largest_cluster_share": float(sizes.max() / n) if len(sizes) and n else 0.0,
        "cluster_sizes": {int(k): int(v) for k, v in zip(*np.unique(labels[labels >= 0], return_counts=True))},
    }
