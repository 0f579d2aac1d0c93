"""Embedders (tiny local CLIP, offline EfficientNet-Lite0), the Ray Data path and the embedding cache."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgrestore.embedding import CLIPEmbedder, EfficientNetLite0Embedder, EmbedderError, create_embedder
from imgrestore.embedding.embedders import normalize_spec

TINY_DIM = 16


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A tiny random CLIP saved like a hub model (save_pretrained), loaded back through from_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=TINY_DIM,
    )
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    """12 small images of different sizes (one grayscale) from skimage's photos."""
    import skimage.data

    folder = tmp_path_factory.mktemp("imgs")
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    paths = []
    for i in range(12):
        src = photos[i % 3]
        crop = src[i * 7:i * 7 + 80 + i, i * 5:i * 5 + 96]
        im = Image.fromarray(crop).convert("L") if i == 11 else Image.fromarray(crop)
        path = folder / f"img_{i:02d}.png"
        im.save(path)
        paths.append(str(path))
    return paths


def _random_images(n=3):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (30 + 7 * i, 41 + 3 * i, 3), dtype=np.uint8) for i in range(n)]


def test_tiny_clip_loads_from_folder_and_embeds(tiny_clip):
    emb = CLIPEmbedder(tiny_clip)
    assert emb.dim == TINY_DIM and emb.spec == f"clip:{tiny_clip}"
    out = emb.embed(_random_images(3))
    assert out.shape == (3, TINY_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the spec path gives the same model
    again = create_embedder(f"clip:{tiny_clip}").embed(_random_images(3))
    np.testing.assert_allclose(out, again, atol=1e-6)
    assert emb.embed([]).shape == (0, TINY_DIM)


def test_gray_input_is_accepted(tiny_clip):
    gray = np.full((40, 40), 128, np.uint8)
    assert CLIPEmbedder(tiny_clip).embed([gray]).shape == (1, TINY_DIM)


def test_effnet_pretrained_weights_load_and_classify():
    import skimage.data

    emb = EfficientNetLite0Embedder()
    cat = skimage.data.chelsea()
    probs = emb.classify([cat])
    assert 281 <= int(probs.argmax()) <= 285, "ImageNet 281-285 are the cat classes"
    vec = emb.embed([cat])
    assert vec.shape == (1, 1280) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, atol=1e-5)


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EmbedderError) as err:
        CLIPEmbedder("imgrestore-test/no-such-clip-model")
    msg = str(err.value)
    assert "hub cannot be reached" in msg and "effnet-lite0" in msg and "local folder" in msg


def test_missing_local_folder_and_bad_spec(tmp_path):
    with pytest.raises(EmbedderError, match="not found"):
        CLIPEmbedder(str(tmp_path / "nope"))
    with pytest.raises(EmbedderError, match="unknown embedder spec"):
        create_embedder("resnet")
    assert normalize_spec("clip") == "clip:geolocal/StreetCLIP"
    assert normalize_spec(None) == "effnet-lite0"


def test_actor_plan_leaves_cpu_headroom(ray_local):
    from imgrestore.embedding.ray_embed import plan_actors

    plan = plan_actors()
    assert plan == {"size": 1, "num_gpus": 0, "num_cpus": 1, "threads": 1, "batch_size": 16,  # 2 CPUs: one actor,
                    "decode_batch": 16}  # one CPU free
    assert plan_actors(num_actors=4)["size"] == 1


@pytest.mark.parametrize("which", ["clip", "effnet"])
def test_ray_data_matches_plain_loop(ray_local, tiny_clip, image_files, tmp_path, which):
    from imgrestore.embedding.ray_embed import embed_images, embed_images_local

    spec = f"clip:{tiny_clip}" if which == "clip" else "effnet-lite0"
    frame = embed_images(image_files, spec, batch_size=4, cache_dir=tmp_path)
    assert list(frame.columns) == ["name", "path", "sha256", "embedding"]
    assert list(frame["path"]) == image_files and frame["name"][0] == "img_00.png"
    assert frame.attrs["embedder"] == spec and frame.attrs["n_embedded"] == len(image_files)
    ray_vecs = np.stack(frame["embedding"])
    local = embed_images_local(image_files, spec, batch_size=5)
    np.testing.assert_allclose(ray_vecs, local, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ray_vecs, axis=1), 1.0, atol=1e-5)


def test_cache_embeds_only_new_or_changed_files(ray_local, image_files, tmp_path):
    import shutil

    from imgrestore.embedding.ray_embed import embed_images

    files = []
    for p in image_files[:6]:
        files.append(str(tmp_path / "data" / p.split("/")[-1]))
        (tmp_path / "data").mkdir(exist_ok=True)
        shutil.copy(p, files[-1])
    cache = tmp_path / "cache"
    first = embed_images(files, "effnet-lite0", batch_size=4, cache_dir=cache)
    assert first.attrs["n_embedded"] == 6 and first.attrs["n_cached"] == 0
    second = embed_images(files, "effnet-lite0", batch_size=4, cache_dir=cache)
    assert second.attrs["n_embedded"] == 0 and second.attrs["n_cached"] == 6
    np.testing.assert_array_equal(np.stack(first["embedding"]), np.stack(second["embedding"]))
    # rewrite one file with other content: only that one is embedded again
    Image.open(image_files[7]).save(files[2])
    third = embed_images(files, "effnet-lite0", batch_size=4, cache_dir=cache)
    assert third.attrs["n_embedded"] == 1 and third.attrs["n_cached"] == 5
    assert third["sha256"][2] != first["sha256"][2]
    assert not np.allclose(third["embedding"][2], first["embedding"][2])
    np.testing.assert_array_equal(third["embedding"][0], first["embedding"][0])


def test_ray_data_reports_its_pace(ray_local, image_files):
    """The plan says when the first embeddings came out and the rate after them (doctor --bench reports both)."""
    from imgrestore.embedding.ray_embed import ray_embed_paths

    vecs, plan = ray_embed_paths(image_files, "effnet-lite0", batch_size=2)
    assert sorted(vecs) == sorted(image_files)
    assert plan["first_batch_s"] > 0 and 0 < plan["steady_images_per_s"] < float("inf")
