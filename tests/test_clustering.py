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
from imgrestore.clustering.split import describe_folds

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


def test_umaps_kernels_compile_once_into_numbas_disk_cache(fitted):
    """umap-learn compiles its numba kernels in every new process (~16 s here) unless numba's disk cache is on
    for them; SceneClusterer turns it on (benchmarks/umap_compile.py: 17 s a process -> 0.8 s, the same map)."""
    import sys
    from pathlib import Path

    from numba.core.dispatcher import Dispatcher
    from umap.umap_ import smooth_knn_dist

    kernels = {id(v): v for m in list(sys.modules) if m.split(".")[0] == "umap"
               for v in vars(sys.modules[m]).values() if isinstance(v, Dispatcher)}
    assert len(kernels) > 50 and all(k.stats.cache_path for k in kernels.values())
    # a kernel the fit compiled (or loaded): its index is on disk for the next process
    assert list(Path(smooth_knn_dist.stats.cache_path).glob("*smooth_knn_dist*.nbi"))


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


def _skewed_labels(rng, n):
    """One cluster with 30% of the images, many small clusters (2..15), 3..15% noise, shuffled."""
    big, noise = int(0.3 * n), int(rng.uniform(0.03, 0.15) * n)
    sizes, rest = [big], n - big - noise
    while rest > 0:
        sizes.append(min(rest, int(rng.integers(2, 16))))
        rest -= sizes[-1]
    labels = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), np.full(noise, -1)])
    rng.shuffle(labels)
    return labels


@pytest.mark.parametrize("trial", range(12))
def test_folds_are_stratified_over_clusters_without_leaking(trial):
    rng = np.random.default_rng(100 + trial)
    n, k = int(rng.integers(80, 400)), int(rng.choice([3, 4, 5, 6]))
    labels = _skewed_labels(rng, n)
    folds = group_folds(labels, n_splits=k, seed=trial)
    assert sorted(set(folds)) == list(range(k))
    check_no_leak(labels, folds)
    stats = describe_folds(labels, folds)
    assert [s["images"] for s in stats] == np.bincount(folds).tolist()
    n_clusters, n_groups = len(set(labels[labels >= 0])), len(set(labels[labels >= 0])) + (labels < 0).sum()
    # fold 0 (the default validation fold) spans several scenes - never one cluster alone - and is the most
    # varied fold (effective number of scenes)
    f0 = stats[0]
    assert f0["clusters"] >= min(n_clusters // k, 3)
    assert f0["groups"] >= min(n_groups // k, 2)  # 3 unless a few clusters of similar size fill it
    assert f0["largest_cluster_share"] < 1.0 and f0["effective_scenes"] >= min(1.5, n_groups / k)
    assert f0["effective_scenes"] == max(s["effective_scenes"] for s in stats)
    # the 30% cluster is not fold 0, and the other folds share the clusters evenly (the 30% cluster's fold
    # fills up to the size cap early, so it holds fewer)
    big_fold, cap = folds[labels == 0][0], np.ceil(n / k * 1.25)
    assert big_fold != 0
    counts = [s["clusters"] for s in stats if s["fold"] != big_fold]
    assert max(counts) - min(counts) <= 1
    # sizes: under the cap except a fold holding a cluster too big for it; none starved
    for s in stats:
        assert s["images"] <= cap or s["clusters"] == 1 and s["images"] == (labels == s["largest_cluster"]).sum()
        assert s["images"] >= 0.5 * n / k  # starved only where few, coarse clusters leave no choice


def test_fold_zero_is_not_one_cluster_on_a_realistic_split():
    # what GroupKFold made of this: fold 0 = cluster 0 (20 images) and nothing else, for every seed
    labels = np.concatenate([np.repeat(np.arange(8), [20, 14, 12, 10, 9, 8, 7, 6]), np.full(10, -1)])
    np.random.default_rng(0).shuffle(labels)
    for seed in (0, 1, 42):
        folds = group_folds(labels, n_splits=5, seed=seed)
        check_no_leak(labels, folds)
        stats = describe_folds(labels, folds)
        assert stats[0]["clusters"] == 2 and stats[0]["largest_cluster_share"] < 0.5  # two mid-sized scenes
        assert 0 not in set(labels[folds == 0])
        assert [s["clusters"] for s in stats] == [2, 2, 2, 1, 1]
        assert max(s["images"] for s in stats) - min(s["images"] for s in stats) <= 1


def test_folds_are_deterministic_per_seed_and_change_with_it():
    labels = _skewed_labels(np.random.default_rng(7), 200)
    a, b = group_folds(labels, n_splits=5, seed=3), group_folds(labels, n_splits=5, seed=3)
    np.testing.assert_array_equal(a, b)
    others = [group_folds(labels, n_splits=5, seed=s) for s in (4, 5, 6)]
    assert any((o != a).any() for o in others)
    for o in others:
        check_no_leak(labels, o)


def test_a_cluster_bigger_than_a_fold_goes_alone_and_not_to_fold_zero():
    # cluster 0 holds 60% of the images: it must sit in one fold, and that fold is not fold 0
    labels = np.concatenate([np.zeros(60, int), np.repeat(np.arange(1, 9), 4), np.full(8, -1)])
    folds = group_folds(labels, n_splits=4, seed=0)
    check_no_leak(labels, folds)
    stats = describe_folds(labels, folds)
    big = folds[labels == 0][0]
    assert big != 0 and stats[big]["clusters"] == 1
    assert stats[0]["clusters"] >= 2


def test_describe_folds():
    labels = np.array([0, 0, 0, 1, -1, 2, 2, -1])
    folds = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    s0, s1 = describe_folds(labels, folds)
    assert s0 == {"fold": 0, "images": 5, "clusters": 2, "noise": 1, "groups": 3, "largest_cluster": 0,
                  "largest_cluster_share": 0.6, "effective_scenes": pytest.approx(25 / 11)}  # 1 / (.6² + .2² + .2²)
    assert s1["clusters"] == 1 and s1["noise"] == 1 and s1["largest_cluster"] == 2
    empty = describe_folds(np.array([-1, -1]), np.array([0, 1]), n_folds=3)[2]
    assert empty["images"] == 0 and empty["largest_cluster"] is None and empty["largest_cluster_share"] == 0.0


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


# ----------------------------------------------------------------------------- placement (Ray task)

GPU_CLUSTER_YAML = """
max_workers: 4
head_node_type: head
available_node_types:
  head: {resources: {CPU: 8}, min_workers: 0, max_workers: 0}
  gpu_worker: {resources: {CPU: 4, GPU: 1}, min_workers: 0, max_workers: 4}
"""


def test_autoscaler_config_decides_the_gpu_request(ray_local, tmp_path):
    from pathlib import Path

    from imgrestore.clustering.placement import autoscaler_gpus, plan_clustering

    gpu_yaml = tmp_path / "gpu.yaml"
    gpu_yaml.write_text(GPU_CLUSTER_YAML)
    cpu_yaml = tmp_path / "cpu.yaml"
    cpu_yaml.write_text(GPU_CLUSTER_YAML.replace("GPU: 1", "GPU: 0"))
    assert autoscaler_gpus(gpu_yaml)[0] == 4
    # the session's Ray has no GPU: a GPU is asked for only when the autoscaler can add one
    plan = plan_clustering("auto", gpu_yaml)
    assert plan["num_gpus"] == 1 and "autoscaler can add" in plan["reason"]
    assert plan_clustering("auto", cpu_yaml)["num_gpus"] == 0
    assert plan_clustering("auto", tmp_path / "missing.yaml")["num_gpus"] == 0
    assert plan_clustering("cpu", gpu_yaml)["num_gpus"] == 0
    # this repository's cluster.yaml says `resources: {}`: `ray up` fills them in (g5.xlarge -> GPU 1) in the
    # bootstrap config the head reads; the raw file alone tells nothing
    assert autoscaler_gpus(Path(__file__).resolve().parents[1] / "cluster.yaml")[0] == 0
    with pytest.raises(ValueError, match="backend must be one of"):
        plan_clustering("gpu")


def test_clustering_task_on_a_cpu_cluster(ray_local, fitted):
    from imgrestore.clustering.placement import run_clustering

    X, _ = _blobs(300, seed=1)
    params = {"n_neighbors": 5, "min_cluster_size": 5}
    res = run_clustering(X, X[:10], params, backend="auto")
    assert res["placement"]["num_gpus"] == 0 and res["backend"] == "cpu" and res["where"]["gpu_ids"] == []
    local = run_clustering(X, X[:10], params, backend="cpu", use_ray=False)
    assert local["placement"]["reason"] == "in this process (no Ray)"
    # same parameters, same seed: the Ray task and this process find the same clusters as SceneClusterer
    np.testing.assert_array_equal(res["labels"], local["labels"])
    np.testing.assert_array_equal(res["labels"], fitted[0].labels_)
    assert res["test_labels"].shape == (10,) and res["test_map"].shape == (10, 2)
    if not cuml_available()[0]:
        with pytest.raises(RuntimeError, match="backend='cuml'.*the task had no GPU"):
            run_clustering(X, None, params, backend="cuml")


def test_source_photos_stay_on_one_side_with_their_clusters():
    """sources (the photo each crop came from): crops of one photo in different clusters, and noise crops,
    all land in one fold; without sources the same labels leak photos across folds."""
    from imgrestore.clustering.split import leakage_groups

    rng = np.random.default_rng(0)
    n = 300
    photos = rng.integers(0, 60, n)
    labels = photos % 20                      # 20 clusters of 3 photos each...
    stray = rng.random(n) < 0.08
    labels[stray] = rng.integers(-1, 20, stray.sum())  # ...but some crops land in another cluster, or in noise
    photos[:5] = 999                          # one photo whose crops are all noise
    labels[:5] = -1
    sources = [f"photo-{p}" for p in photos]
    sources[10] = None                        # an image of unknown source: its own cluster still holds it

    def leaks(folds):
        return sum(len(set(folds[photos == p])) > 1 for p in np.unique(photos))

    assert leaks(group_folds(labels, n_splits=5, seed=1)) > 0
    groups = leakage_groups(labels, sources)
    for key in (labels[labels >= 0], photos):  # same cluster or same photo: same group
        for v in np.unique(key):
            sel = (labels == v) if key is not photos else (photos == v)
            if key is not photos:
                sel &= labels >= 0
            assert len(set(groups[sel])) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few groups for 5 folds is fine here
        folds = group_folds(labels, n_splits=5, seed=1, sources=sources)
    assert leaks(folds) == 0 and len(set(folds)) >= 2
    assert (folds == 0).sum() <= np.ceil(n / len(set(folds)) * 1.25)  # the giant joined group is not fold 0
    check_no_leak(labels, folds)
    assert len(set(folds[:5])) == 1           # the noise-only photo is one group too
    assert np.array_equal(leakage_groups(labels), cluster_groups(labels))
    with pytest.raises(ValueError, match="sources has 3 entries"):
        leakage_groups(labels, ["a", "b", "c"])
