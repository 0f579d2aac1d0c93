"""Hue-prior decoding as a search stage (imgrestore.tuning.decoding): scored alike for every restorer, chosen on
validation, carried by the champion's checkpoint."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imgrestore.models import create_model
from imgrestore.training.checkpoint import load_model, save_model
from imgrestore.training.data import RestorationDataset
from imgrestore.training.evaluate import evaluate
from imgrestore.training.loop import read_split
from imgrestore.tuning.baselines import classical_across_folds, label, pick_champion
from imgrestore.tuning.decoding import AS_IS, HUE_PRIOR, classical_champion, fit_prior, score_decodings


@pytest.fixture(scope="module")
def split(tiny_dacon, tmp_path_factory):
    frame = pd.read_csv(tiny_dacon / "train.csv")
    frame["cluster"] = np.arange(len(frame)) % 5
    frame["fold"] = np.where(frame["cluster"] == 0, 0, 1)
    path = tmp_path_factory.mktemp("split") / "train_preproc_1.csv"
    frame.to_csv(path, index=False)
    return path


def test_decoded_scores_are_the_submissions_and_the_as_is_ones_are_validations(tiny_dacon, split):
    train, val = read_split(str(tiny_dacon), str(split), 0)
    prior = fit_prior(train)
    assert prior.n_images == len(train)  # the training fold only, never validation
    dataset = RestorationDataset(val, None)
    model = create_model("telea").eval()
    got = score_decodings(model, dataset, 4, prior)
    metrics, _ = evaluate(model, dataset, "cpu", 4, 0)
    assert got[AS_IS]["score"] == pytest.approx(metrics["score"], abs=1e-9)  # the training loop's validation
    assert got[HUE_PRIOR]["hist_sim"] > got[AS_IS]["hist_sim"]  # a gray restorer's hues come from the prior
    model.hue_prior = prior
    with pytest.raises(ValueError, match="already decodes"):
        score_decodings(model, dataset, 4, prior)


def test_decoding_in_ray_tasks_scores_as_decoding_here(tiny_dacon, split, ray_local, monkeypatch):
    """Polish decodes in Ray tasks (chunks of images): the same fixed seed, so the same scores; and the work is
    done in the tasks (here, decoding is made to fail: Ray's workers import the module unpatched)."""
    import imgrestore.tuning.decoding as decoding

    train, val = read_split(str(tiny_dacon), str(split), 0)
    prior = fit_prior(train)
    dataset = RestorationDataset(val, None)
    model = create_model("telea").eval()
    assert decoding.chunk_size(5, 8) == 3 and decoding.chunk_size(100, 8) == 8  # 2 CPUs
    here = score_decodings(model, dataset, 5, prior)

    def not_here(*args):
        raise AssertionError("decoded in the driver")

    monkeypatch.setattr(decoding, "_score_chunk", not_here)
    with pytest.raises(AssertionError, match="in the driver"):
        score_decodings(model, dataset, 5, prior)
    assert score_decodings(model, dataset, 5, prior, parallel=True) == here


def test_prior_sample_is_capped_and_seeded(tiny_dacon, split):
    train, _ = read_split(str(tiny_dacon), str(split), 0)
    a, b = fit_prior(train, limit=5, seed=1), fit_prior(train, limit=5, seed=1)
    assert a.n_images == 5 and np.array_equal(a.histogram, b.histogram)
    with pytest.raises(ValueError, match="no training truths"):
        fit_prior(train.iloc[:0])


def test_classical_champion_carries_its_prior_through_the_checkpoint(tiny_dacon, split, tmp_path):
    plain = classical_champion("fsr", AS_IS, tiny_dacon, split, 0)
    assert getattr(plain, "hue_prior", None) is None
    decoded = classical_champion("fsr", HUE_PRIOR, tiny_dacon, split, 0)
    again = load_model(save_model(decoded, tmp_path / "fsr"))
    assert np.allclose(again.hue_prior.histogram, decoded.hue_prior.histogram, atol=1e-8)
    assert load_model(save_model(plain, tmp_path / "plain")).hue_prior is None
    with pytest.raises(ValueError, match="unknown decoding"):
        classical_champion("fsr", "sharpen", tiny_dacon, split, 0)


def test_champion_is_chosen_between_equally_decoded_restorers():
    baselines = pd.DataFrame([
        {"name": "fsr", "decoding": HUE_PRIOR, "score": 0.49},
        {"name": "fsr", "decoding": AS_IS, "score": 0.43},
        {"name": "telea", "decoding": AS_IS, "score": 0.42}])
    lost = pick_champion(0.47, "t1", baselines, AS_IS)  # beats every gray restorer, not fsr decoded
    assert (lost.kind, lost.name, lost.decoding) == ("classical", "fsr", HUE_PRIOR)
    assert lost.best_classical == "fsr + hue prior" and lost.margin == 0
    won = pick_champion(0.50, "t1", baselines, HUE_PRIOR)
    assert (won.kind, won.decoding) == ("trial", HUE_PRIOR) and won.margin == pytest.approx(0.01)
    assert label("trial t1", HUE_PRIOR) == "trial t1 + hue prior" and label("fsr") == "fsr"


def test_a_trial_must_beat_the_classical_restorer_by_the_required_margin():
    """learned_margin on the means (no per-image scores, learned_sem 0): a close call goes to the restorer that
    learned nothing, and the summary says why."""
    from types import SimpleNamespace

    from imgrestore.tuning.summary import champion_text

    baselines = pd.DataFrame([{"name": "fsr", "decoding": HUE_PRIOR, "score": 0.53, "ssim": 0.9,
                               "masked_ssim": 0.55, "hist_sim": 0.33}])
    close = pick_champion(0.533, "t1", baselines, HUE_PRIOR, min_margin=0.005)
    assert (close.kind, close.name, close.score, close.margin) == ("classical", "fsr", 0.53, 0)
    assert close.trial_score == 0.533 and close.required_margin == 0.005 and close.advantage is None
    alias = SimpleNamespace(reason="first", moved=True, champion_version="1")
    text = champion_text(close, baselines, "models:/m@champion", "1", alias, "sub.zip")
    assert "beat it by the margin 0.0050" in text and "+0.0030" in text
    clear = pick_champion(0.536, "t1", baselines, HUE_PRIOR, min_margin=0.005)
    assert clear.kind == "trial" and clear.margin == pytest.approx(0.006)
    assert pick_champion(0.53, "t1", baselines, HUE_PRIOR).kind == "trial"  # no margin: a tie goes to the trial
    with pytest.raises(ValueError, match="learned_margin"):
        pick_champion(0.6, "t1", baselines, HUE_PRIOR, min_margin=-0.1)
    with pytest.raises(ValueError, match="learned_sem"):
        pick_champion(0.6, "t1", baselines, HUE_PRIOR, min_sems=-1)
    with pytest.raises(ValueError, match="per-image validation scores"):  # a paired test needs them
        pick_champion(0.6, "t1", baselines, HUE_PRIOR, min_sems=2)


def test_the_paired_test_accepts_a_steady_gain_and_refuses_the_same_mean_in_noise():
    """The same mean advantage (+0.004 on 80 images): a luma-like trial, better on nearly every image by a little,
    clears 2 standard errors; a colour-like trial, far better on some images and far worse on others, does not.
    A fixed margin cannot tell them apart."""
    from types import SimpleNamespace

    from imgrestore.tuning.baselines import PairedAdvantage
    from imgrestore.tuning.summary import champion_text

    rng = np.random.default_rng(0)
    classical = rng.uniform(0.4, 0.6, 80)
    baselines = pd.DataFrame([{"name": "fsr", "decoding": HUE_PRIOR, "score": classical.mean(), "ssim": 0.9,
                               "masked_ssim": 0.55, "hist_sim": 0.33, "image_scores": tuple(classical)},
                              {"name": "telea", "decoding": AS_IS, "score": 0.42, "ssim": 0.9,
                               "masked_ssim": 0.5, "hist_sim": 0.1, "image_scores": tuple(classical - 0.1)}])
    noise = rng.normal(0, 1, 80)
    steady = classical + 0.004 + 0.002 * (noise - noise.mean()) / noise.std()
    noisy = classical + 0.004 + 0.03 * (noise - noise.mean()) / noise.std()
    won = pick_champion(steady.mean(), "t1", baselines, HUE_PRIOR, trial_images=steady, min_sems=2)
    lost = pick_champion(noisy.mean(), "t2", baselines, HUE_PRIOR, trial_images=noisy, min_sems=2)
    assert won.kind == "trial" and lost.kind == "classical" and lost.name == "fsr"
    assert won.advantage.mean == pytest.approx(0.004) and lost.advantage.mean == pytest.approx(0.004)
    assert won.advantage.sem == pytest.approx(0.002 / np.sqrt(80), rel=0.02)
    assert lost.advantage.sem == pytest.approx(0.03 / np.sqrt(80), rel=0.02)
    assert won.advantage.higher > 70 and won.advantage.images == 80
    # without the paired test (learned_sem 0) both means clear a zero margin; a fixed 0.005 refuses both
    assert pick_champion(noisy.mean(), "t2", baselines, HUE_PRIOR, trial_images=noisy).kind == "trial"
    assert pick_champion(steady.mean(), "t1", baselines, HUE_PRIOR, trial_images=steady,
                         min_margin=0.005).kind == "classical"
    alias = SimpleNamespace(reason="first", moved=True, champion_version="1")
    text = champion_text(lost, baselines, "models:/m@champion", "1", alias, "sub.zip")
    assert "could beat it by 2 standard errors" in text and f"per image {lost.advantage.text()}" in text
    assert "+0.0040 ± 0.0034 (higher on" in text
    assert "per image +0.0040" in champion_text(won, baselines, "models:/m@champion", "1", alias, "sub.zip")
    with pytest.raises(ValueError, match="same validation images"):
        pick_champion(0.6, "t1", baselines, HUE_PRIOR, trial_images=steady[:70], min_sems=2)
    no_images = baselines.drop(columns="image_scores")
    with pytest.raises(ValueError, match="no per-image scores for fsr \\+ hue prior"):
        pick_champion(0.6, "t1", no_images, HUE_PRIOR, trial_images=steady, min_sems=2)
    assert PairedAdvantage.of([0.5], [0.4]).sem == float("inf")  # one image: no test can pass on it
    one = pd.DataFrame([{"name": "fsr", "decoding": AS_IS, "score": 0.4, "image_scores": 0.4}])  # a CSV's one image
    assert pick_champion(0.5, "t1", one, AS_IS, trial_images=[0.5], min_sems=2).kind == "classical"
    assert pick_champion(0.5, "t1", one, AS_IS, trial_images=[0.5]).kind == "trial"  # learned_sem 0: the means


def test_a_gain_from_one_scene_does_not_pass_the_paired_test():
    """The standard error is clustered by scene: +0.04 on one of 8 clusters and nothing elsewhere is +0.005 on
    average and 'significant' image by image, but it is one scene's luck (a colour model's hues suit a scene or
    do not), and the clustered test refuses it; the same gain spread over every scene passes."""
    from imgrestore.tuning.baselines import PairedAdvantage

    rng = np.random.default_rng(1)
    classical = rng.uniform(0.4, 0.6, 80)
    clusters = np.repeat(np.arange(8), 10)
    jitter = rng.normal(0, 0.001, 80)
    one_scene = classical + np.where(clusters == 0, 0.04, 0.0) + jitter
    everywhere = classical + 0.005 + jitter
    baselines = pd.DataFrame([{"name": "fsr", "decoding": HUE_PRIOR, "score": classical.mean(),
                               "image_scores": " ".join(repr(float(v)) for v in classical)}])  # as in baselines.csv
    by_image = PairedAdvantage.of(one_scene, classical)
    by_scene = PairedAdvantage.of(one_scene, classical, clusters)
    assert by_image.mean == by_scene.mean and by_image.mean / by_image.sem > 3  # "significant" per image
    assert by_scene.sem == pytest.approx(0.005, rel=0.05) and by_scene.clusters == 8
    assert pick_champion(one_scene.mean(), "t1", baselines, HUE_PRIOR, trial_images=one_scene, min_sems=2,
                         groups=clusters).kind == "classical"
    assert pick_champion(everywhere.mean(), "t2", baselines, HUE_PRIOR, trial_images=everywhere, min_sems=2,
                         groups=clusters).kind == "trial"
    noise = PairedAdvantage.of(one_scene, classical, np.where(clusters == 0, 0, -1))  # -1: each image alone
    assert noise.clusters == 1 + 70
    with pytest.raises(ValueError, match="cluster labels"):
        PairedAdvantage.of(one_scene, classical, clusters[:10])


def test_baselines_keep_every_images_score_through_their_csv(tiny_dacon, split, ray_local):
    """evaluate_baselines: each row's image_scores are its images' scores (their mean is the row's score), the
    same images in the same order for every restorer; baselines.csv (a resumed search reads it) keeps them."""
    import io

    from imgrestore.tuning.baselines import baselines_csv, evaluate_baselines, image_scores

    config = {"data_dir": str(tiny_dacon), "preproc_csv": str(split), "val_fold": 0, "image_size": None,
              "max_val_images": 5, "hue_prior": True}
    frame = evaluate_baselines(config, families=("telea", "input_copy"))
    assert len(frame) == 4 and set(frame["decoding"]) == {AS_IS, HUE_PRIOR}
    for row in frame.itertuples():
        scores = image_scores(row.image_scores)
        assert len(scores) == 5 and scores.mean() == pytest.approx(row.score, abs=1e-12)
    again = pd.read_csv(io.StringIO(baselines_csv(frame)))
    for a, b in zip(frame["image_scores"], again["image_scores"]):
        assert np.array_equal(image_scores(a), image_scores(b))  # repr: every digit kept
    telea = frame[(frame["name"] == "telea") & (frame["decoding"] == AS_IS)].iloc[0]
    train, val = read_split(str(tiny_dacon), str(split), 0)
    direct = score_decodings(create_model("telea").eval(), RestorationDataset(val, None), 5, None)
    assert image_scores(telea.image_scores).tolist() == list(direct[AS_IS]["image_scores"])


def test_a_trial_not_offered_the_decoding_is_compared_with_undecoded_baselines():
    """A search resumed after its space turned hue_prior on: its trials were not offered the decoding, so the
    decoded baseline rows are left out of the choice."""
    from imgrestore.tuning.polish import offered

    baselines = pd.DataFrame([{"name": "fsr", "decoding": HUE_PRIOR, "score": 0.49},
                              {"name": "fsr", "decoding": AS_IS, "score": 0.43}])
    assert list(offered(baselines, {"hue_prior": False})["decoding"]) == [AS_IS]
    assert len(offered(baselines, {"hue_prior": True})) == 2
    old = baselines.drop(columns="decoding").iloc[1:]  # a baselines.csv written before decodings existed
    assert offered(old, {}) is old


def test_a_classical_champion_is_scored_on_every_fold_with_a_prior_of_the_other_folds(tiny_dacon, split, monkeypatch):
    """It trained on nothing, so every fold validates it: the search's fold keeps its measured row, every other
    fold is restored and decoded with a prior fitted without that fold's truths; the mean weighs every image."""
    import imgrestore.tuning.baselines as baselines_module

    fitted = []

    def spy(frame, *args, **kw):
        fitted.append(set(frame["fold"]))
        return fit_prior(frame, *args, **kw)

    monkeypatch.setattr(baselines_module, "fit_prior", spy)
    config = {"data_dir": str(tiny_dacon), "preproc_csv": str(split), "val_fold": 0, "image_size": None,
              "max_val_images": 4, "hue_prior": True}
    measured = {"score": 0.9, "ssim": 0.8, "masked_ssim": 0.7, "hist_sim": 0.6}
    table = pd.DataFrame([{"name": "telea", "decoding": HUE_PRIOR, **measured},
                          {"name": "telea", "decoding": AS_IS, **{k: v / 2 for k, v in measured.items()}}])
    choice = pick_champion(None, None, table)
    folds = classical_across_folds(choice, table, config, split)
    assert fitted == [{0}]  # fold 1's prior: fold 0's truths only; fold 0 was not scored again
    assert list(folds.frame["fold"]) == [0, 1] and list(folds.frame["images"]) == [4, 4]
    assert folds.frame.iloc[0][list(measured)].to_dict() == measured
    train, fold1 = read_split(str(tiny_dacon), str(split), 1)
    direct = score_decodings(create_model("telea").eval(), RestorationDataset(fold1, None), 4, fit_prior(train))
    assert folds.frame.iloc[1]["score"] == pytest.approx(direct[HUE_PRIOR]["score"], abs=1e-12)
    assert folds.score == pytest.approx((0.9 + direct[HUE_PRIOR]["score"]) / 2)
    assert "over 2 folds (8 images" in folds.text() and "| 1 | 4 |" in folds.markdown()

    fitted.clear()  # undecoded: no prior anywhere, the as-is scores
    plain = classical_across_folds(pick_champion(None, None, table[table["decoding"] == AS_IS]), table, config,
                                   split)
    assert fitted == [] and plain.frame.iloc[1]["score"] == pytest.approx(direct[AS_IS]["score"], abs=1e-12)
    # a learned champion would need a training per fold
    assert classical_across_folds(pick_champion(2.0, "t1", table), table, config, split) is None


def test_every_fold_counts_alike_and_no_fold_decodes_with_its_own_truths(tiny_dacon, tmp_path, monkeypatch):
    """Three folds of unequal sizes and image caps (the search's fold at max_val_images, the others at
    CV_IMAGES): each fold's prior is fitted on the two others, the forecast is the plain mean of the fold means,
    and an older search's baselines (no `decoding` column) are matched as undecoded."""
    import imgrestore.tuning.baselines as baselines_module

    frame = pd.read_csv(tiny_dacon / "train.csv")
    frame["cluster"] = np.arange(len(frame)) % 5
    frame["fold"] = frame["cluster"] % 3  # folds of 12, 12 and 6 images
    split3 = tmp_path / "train_preproc_1.csv"
    frame.to_csv(split3, index=False)
    fitted = []

    def spy(train_frame, *args, **kw):
        fitted.append(set(train_frame["fold"]))
        return fit_prior(train_frame, *args, **kw)

    monkeypatch.setattr(baselines_module, "fit_prior", spy)
    monkeypatch.setattr(baselines_module, "CV_IMAGES", 3)
    config = {"data_dir": str(tiny_dacon), "preproc_csv": str(split3), "val_fold": 0, "image_size": None,
              "max_val_images": 8, "hue_prior": True}
    measured = {"score": 0.9, "ssim": 0.8, "masked_ssim": 0.7, "hist_sim": 0.6}
    decoded = pd.DataFrame([{"name": "telea", "decoding": HUE_PRIOR, **measured}])
    folds = classical_across_folds(pick_champion(None, None, decoded), decoded, config, split3)
    assert fitted == [{0, 2}, {0, 1}]
    assert list(folds.frame["images"]) == [8, 3, 3]
    assert folds.score == pytest.approx(folds.frame["score"].mean())  # not weighted by the 8 images of fold 0
    assert folds.sem == pytest.approx(folds.frame["score"].std(ddof=1) / np.sqrt(3))

    old = pd.DataFrame([{"name": "telea", **measured}])  # a search from before the decoding column
    fitted.clear()
    plain = classical_across_folds(pick_champion(None, None, old), old, config, split3)
    assert fitted == [] and plain.frame.iloc[0]["score"] == 0.9  # its fold-0 row reused, nothing decoded


def test_a_classical_champion_is_saved_with_its_prior_and_its_folds_fail_softly(tiny_dacon, split, tmp_path,
                                                                              monkeypatch):
    """select_champion, when no trial left a checkpoint: the best classical restorer is saved as the champion
    with the training fold's hue prior (what tune.py registers and the benchmark scores), and scored on every
    fold; a failure of those folds (a forecast only) leaves the champion standing and says why."""
    from types import SimpleNamespace

    import imgrestore.tuning.polish as polish_module
    import imgrestore.tuning.search as search_module
    from imgrestore.training.checkpoint import load_model
    from imgrestore.tuning.polish import select_champion

    def no_trial(*args, **kw):
        raise RuntimeError("no trial produced a checkpoint")

    monkeypatch.setattr(search_module, "best_checkpoint", no_trial)
    measured = {"score": 0.9, "ssim": 0.8, "masked_ssim": 0.7, "hist_sim": 0.6}
    baselines = pd.DataFrame([{"name": "telea", "decoding": HUE_PRIOR, **measured},
                              {"name": "fsr", "decoding": AS_IS, **{k: v / 2 for k, v in measured.items()}}])
    outcome = SimpleNamespace(results=None, baselines=baselines)
    space = SimpleNamespace(metric="score", mode="max", config={"val_fold": 0, "image_size": None,
                                                                "max_val_images": 4, "hue_prior": True})
    sel = select_champion(outcome, space, split, tmp_path / "a", tiny_dacon)
    assert sel.error == "no trial produced a checkpoint" and sel.polished is None
    assert (sel.choice.kind, sel.choice.name, sel.choice.decoding) == ("classical", "telea", HUE_PRIOR)
    model = load_model(sel.checkpoint)
    assert model.name == "telea" and model.hue_prior.n_images == len(read_split(str(tiny_dacon), str(split), 0)[0])
    assert sel.folds is not None and list(sel.folds.frame["fold"]) == [0, 1] and sel.folds_error is None

    def broken(*args, **kw):
        raise OSError("fold 1 unreadable")

    monkeypatch.setattr(polish_module, "classical_across_folds", broken)
    sel = select_champion(outcome, space, split, tmp_path / "b", tiny_dacon)
    assert sel.folds is None and sel.folds_error == "OSError: fold 1 unreadable"
    assert load_model(sel.checkpoint).name == "telea"  # the champion stands
