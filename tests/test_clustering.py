"""Scene clusters (UMAP + HDBSCAN), backend resolution, small inputs, group folds, the cluster map."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from imgrestore.clustering import (
    SceneClusterer,
    check_no_leak,
    cluster_groups,
    cluster_summary,
    cuml_available,
    group_folds,
    resolve_backend,
)

N_CENTERS = 6


def _blobs(n, seed):
    from sklearn.datasets import make_blobs

    # same centers for every call (center_box + random_state of the centers), different samples
    centers = np.random.default_rng(0).uniform(-10, 10, size=(N_CENTERS, 32))
    X, y = make_blobs(n_samples=n, centers=centers, cluster_std=1.0, random_state=seed)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted():
    X, y = _blobs(300, seed=1)
    return SceneClusterer(backend="cpu").fit(X), y


def test_blobs_give_their_clusters(fitted):
    from sklearn.metrics import adjusted_rand_score

    sc, y = fitted
    assert sc.backend_ == "cpu"
    assert sc.embedding_.shape == (300, 2)
    assert len(set(sc.labels_) - {-1}) == N_CENTERS
    assert adjusted_rand_score(y, sc.labels_) > 0.95
    assert sc.params_["n_neighbors"] == 5 and sc.adjustments_ == []


def test_predict_new_points_lands_in_their_cluster(fitted):
    sc, y = fitted
    X_new, y_new = _blobs(60, seed=7)
    blob_to_label = {b: np.bincount(sc.labels_[(y == b) & (sc.labels_ >= 0)]).argmax() for b in range(N_CENTERS)}
    pred = sc.predict(X_new)
    expected = np.array([blob_to_label[b] for b in y_new])
    assert (pred == expected).mean() >= 0.95
    assert sc.transform(X_new).shape == (60, 2)
    # the nearest-cluster fallback (used with cuML builds that lack approximate_predict) agrees
    assert (sc.nearest_labels(sc.transform(X_new)) == expected).mean() >= 0.95


def test_forced_cuml_without_cuml_is_a_clear_error():
    ok, why = cuml_available()
    if ok:
        pytest.skip("cuML and a GPU are available here")
    with pytest.raises(RuntimeError, match="cuml") as err:
        SceneClusterer(backend="cuml").fit(np.random.default_rng(0).normal(size=(20, 4)))
    assert "backend='cpu'" in str(err.value)
    assert resolve_backend("auto") == "cpu"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("gpu")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_small_inputs_never_crash(n):
    X = np.random.default_rng(n).normal(size=(n, 16)).astype(np.float32)
    sc = SceneClusterer(backend="cpu").fit(X)
    assert sc.labels_.shape == (n,) and sc.embedding_.shape == (n, 2)
    assert sc.params_["n_neighbors"] <= max(2, n - 1) and sc.params_["min_cluster_size"] <= max(2, n)
    if n < 5:
        assert sc.adjustments_, "clipped parameters are reported"
    assert sc.predict(X[:2]).shape == (min(2, n),)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        SceneClusterer().fit(np.zeros((0, 3)))


def test_folds_keep_each_cluster_on_one_side():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), rng.integers(3, 30, size=12))
    labels = np.concatenate([labels, np.full(25, -1)])  # plus noise images
    rng.shuffle(labels)
    folds = group_folds(labels, n_splits=5, seed=42)
    assert set(folds) == set(range(5))
    check_no_leak(labels, folds)
    for c in range(12):
        assert len(set(folds[labels == c])) == 1
    # noise images are groups of one: they spread over folds instead of sitting together
    assert len(set(folds[labels == -1])) > 1
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= np.bincount(labels[labels >= 0]).max()
    np.testing.assert_array_equal(folds, group_folds(labels, n_splits=5, seed=42))  # deterministic


def test_noise_groups_and_plain_kfold_would_leak():
    labels = np.array([0, 0, 0, -1, -1, 1, 1])
    groups = cluster_groups(labels)
    assert list(groups[:3]) == [0, 0, 0] and len(set(groups[3:5])) == 2 and groups[3] > 1
    with pytest.raises(AssertionError, match="split across"):
        check_no_leak(labels, np.arange(7) % 2)  # what a plain KFold can do


def test_fewer_groups_than_folds():
    with pytest.warns(UserWarning, match="using 3 folds"):
        folds = group_folds(np.array([0, 0, 1, 1, 2, 2]), n_splits=5)
    assert sorted(set(folds)) == [0, 1, 2]
    with pytest.raises(ValueError, match="one cluster"):
        group_folds(np.zeros(10, int), n_splits=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(group_folds(np.full(10, -1), n_splits=5)) == set(range(5))  # all noise: 10 groups


def test_summary_and_cluster_map(fitted, tmp_path):
    from PIL import Image

    from imgrestore.clustering.plots import plot_cluster_map

    sc, _ = fitted
    s = cluster_summary(np.array([0, 0, 1, 1, 1, -1]))
    assert s["n_clusters"] == 2 and s["n_noise"] == 1 and abs(s["noise_share"] - 1 / 6) < 1e-9
    assert s["cluster_size_max"] == 3 and s["cluster_sizes"] == {0: 2, 1: 3}
    thumbs = []
    for i in range(4):
        p = tmp_path / f"t{i}.png"
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(p)
        thumbs.append(str(p))
    paths = [thumbs[i % 4] for i in range(len(sc.labels_))]
    labels = sc.labels_.copy()
    labels[:10] = -1
    out = plot_cluster_map(sc.embedding_, labels, tmp_path / "map.png", image_paths=paths,
                           test_embedding=sc.embedding_[:5])
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500
