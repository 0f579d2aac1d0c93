"""Search spaces: the shipped YAML files load, distributions become Tune samplers, errors name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.search.sample import Categorical, Float

from imgrestore.models import is_model
from imgrestore.tuning.space import check_space, load_space

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


@pytest.mark.parametrize("name", ["demo", "cpu", "dacon"])
def test_shipped_spaces_load_and_pass_the_driver_checks(name):
    space = load_space(SPACES / f"{name}.yaml")
    ps = space.param_space()
    names = ps["model"]["name"]
    assert all(is_model(m) for m in (names.categories if isinstance(names, Categorical) else [names]))
    assert isinstance(ps["lr"], Float)
    assert space.metric == "score" and space.mode == "max"
    check_space(space)  # every model/loss/setting combination a trial could draw builds


@pytest.mark.parametrize("edit, message", [
    ({"model": {"name": "no_such_model"}}, "unknown model 'no_such_model'"),
    ({"model": {"name": {"choice": ["unet", "nope"]}}}, "unknown model 'nope'"),
    ({"epochs": -1}, "epochs must be >= 1"),
    ({"loss": {"l2": 1.0}}, "unknown loss 'l2'"),
    ({"amp": "fp8"}, "amp must be one of"),
    ({"image_size": {"choice": [128, 256]}}, "image_size is searched"),
    ({"model": {"name": "unet", "norm": "nope"}}, "norm must be one of"),
    ({"learned_margin": {"uniform": [0.0, 0.01]}}, "learned_margin must be a constant number >= 0"),
    ({"learned_margin": -0.01}, "learned_margin must be a constant number >= 0"),
    ({"learned_margin": float("inf")}, "learned_margin must be a constant number >= 0"),
    ({"learned_sem": {"choice": [1, 2]}}, "learned_sem must be a constant number >= 0"),
    ({"learned_sem": -1}, "learned_sem must be a constant number >= 0"),
])
def test_space_errors_are_caught_on_the_driver(edit, message):
    space = load_space(SPACES / "demo.yaml")
    space.config = {**space.config, **edit}
    with pytest.raises(ValueError, match=message):
        check_space(space)


def test_sample_is_plain_data(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("config:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  model: {name: unet, depth: {choice: [2, 3]}}\n")
    space = load_space(p)
    sample = space.param_space()["lr"].sample()
    assert 1e-4 <= sample <= 1e-2
    assert space.name == "s" and space.param_space()["model"]["name"] == "unet"


@pytest.mark.parametrize("text, message", [
    ("config: {lr: {loguniform: 3}}", "config.lr: 'loguniform' needs a list"),
    ("config: {lr: {uniform: [a, b]}}", "config.lr: bad 'uniform'"),
    ("config: {lerning_rate: 1}", "unknown keys \\['lerning_rate'\\]"),
    ("nmae: x\nconfig: {}", "unknown keys \\['nmae'\\]"),
    ("config: [1, 2", "not valid YAML"),
    ("epochs: 3", "at least a 'config' key"),
])
def test_bad_spaces_name_the_file_and_key(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        load_space(p)
    assert str(p) in str(e.value)
