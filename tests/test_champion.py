"""The champion alias moves only to a better model on the same validation, and says why."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imgrestore.models import create_model
from imgrestore.tracking import get_or_create_experiment, setup_tracking
from imgrestore.tracking.champion import load_restorer, log_champion, validation_fingerprint
from imgrestore.training.checkpoint import save_model


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient(uri)
    exp = get_or_create_experiment("champions", uri)
    ckpt = save_model(create_model("telea"), tmp_path / "telea")

    def register(score: float, fingerprint: str, kind: str | None = None, learned_margin: float = 0.0):
        run = client.create_run(exp)
        return log_champion(ckpt, run.info.run_id, "imgrestore-test", uri, score, fingerprint, f"score {score}",
                            tags=None if kind is None else {"kind": kind}, learned_margin=learned_margin)

    return client, register, uri


def test_alias_moves_only_to_a_better_model_on_the_same_validation(store):
    client, register, uri = store
    same = validation_fingerprint("name,fold\na.png,0\n", 0, 128, 64)
    _, v1, d1 = register(0.41, same)
    assert d1.moved and d1.champion_version == v1
    _, v2, d2 = register(0.40, same)  # worse on the same validation: registered, not aliased
    assert not d2.moved and d2.champion_version == v1 and "stays champion" in d2.reason
    assert str(client.get_model_version_by_alias("imgrestore-test", "champion").version) == v1
    _, v3, d3 = register(0.42, same)  # better: the alias moves
    assert d3.moved and str(client.get_model_version_by_alias("imgrestore-test", "champion").version) == v3
    other = validation_fingerprint("name,fold\nb.png,0\n", 0, 128, 64)
    _, v4, d4 = register(0.30, other)  # another validation: not comparable, moves, and says so
    assert d4.moved and "other images" in d4.reason
    version = client.get_model_version("imgrestore-test", v2)
    assert version.tags["val_score"] == "0.400000" and version.tags["validation"] == same
    assert version.description == "score 0.4"
    import tempfile

    scratch = Path(tempfile.mkdtemp())  # where load_restorer's download goes, to see that it leaves nothing
    before = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        model = load_restorer("models:/imgrestore-test@champion", uri)
    finally:
        tempfile.tempdir = before
    assert model.name == "telea" and list(scratch.iterdir()) == []


def test_a_learned_champion_keeps_the_alias_from_a_classical_one_only_by_the_margin(store):
    """The search's learned_margin holds across searches too: a classical restorer takes the alias from a learned
    champion that scored higher on the same validation by less than the margin."""
    client, register, uri = store
    same = validation_fingerprint("name,fold\na.png,0\n", 0, 128, 64)
    _, v1, d1 = register(0.5351, same, "trial", 0.005)
    _, v2, d2 = register(0.5322, same, "classical", 0.005)
    assert d2.moved and "required 0.0050" in d2.reason
    assert str(client.get_model_version_by_alias("imgrestore-test", "champion").version) == v2
    _, _, d = register(0.5360, same, "trial", 0.005)  # +0.0038 over the classical incumbent: not enough
    assert not d.moved and d.champion_version == v2 and "does not beat" in d.reason
    _, v3, d3 = register(0.5400, same, "trial", 0.005)  # +0.0078: clears the margin, the alias moves
    assert d3.moved and "required 0.0050" in d3.reason
    _, v4, d4 = register(0.5330, same, "classical", 0.005)  # the learned one beats it by 0.007: it stays
    assert not d4.moved and d4.champion_version == v3 and "stays champion" in d4.reason


def test_fingerprint_depends_on_every_validation_setting():
    base = validation_fingerprint("csv", 0, 128, 64)
    assert len({base, validation_fingerprint("csv2", 0, 128, 64), validation_fingerprint("csv", 1, 128, 64),
                validation_fingerprint("csv", 0, 256, 64), validation_fingerprint("csv", 0, 128, 32)}) == 5
