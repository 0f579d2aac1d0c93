"""Shared fixtures. Nothing here needs ../shared: datasets are built from the bundled photos."""
from __future__ import annotations

import io
import os
import struct
import zlib

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_dacon(tmp_path_factory):
    """A real-photo DACON dataset: 30 train pairs and 6 test inputs at 64x64, with test_gt/ and sources.csv."""
    from imgrestore.data.build import BuildConfig, build_dataset
    from imgrestore.data.embedded import bundled_photos

    out = tmp_path_factory.mktemp("data") / "tiny"
    return build_dataset(bundled_photos(), out, BuildConfig(size=64, n_train=30, n_test=6, seed=1), progress=False)


TINY_SPACE = """
name: tiny
metric: score
mode: max
num_samples: 2
max_concurrent_trials: 2
search: {algorithm: optuna}
scheduler: {name: fifo}
resources: {cpu: 1}
max_failures: 2
config:
  model:
    name: {choice: [unet, two_stage_unet]}
    chroma: {choice: [regression, classification]}
    base_channels: 4
    depth: 2
  loss: {l1: 1.0, hue_hist: {choice: [0.0, 0.1]}}
  lr: {loguniform: [1.0e-3, 3.0e-3]}
  batch_size: 4
  image_size: null
  epochs: {epochs}
  max_val_images: 4
  hue_prior: true
"""


@pytest.fixture(scope="session")
def tiny_space_yaml():
    """The text of a tiny search space (2 trials, 4-channel models), for end-to-end runs."""
    return lambda epochs=2: TINY_SPACE.replace("{epochs}", str(epochs))


def start_local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (starting Ray costs seconds)."""
    ray = start_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def no_local_ray():
    """For a module that connects to a Ray cluster of its own (tests/test_cluster.py): disconnects from the
    session's local Ray first, and starts it again afterwards if it was running, so that tests using
    `ray_local` later in the session still find it."""
    import ray

    was_running = ray.is_initialized()
    ray.shutdown()
    yield
    ray.shutdown()
    if was_running:
        start_local_ray()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def corrupt_png_bytes(image, kind: str) -> bytes:
    """PNG bytes of the Pillow `image` with a valid header and valid chunk CRCs, but bad pixel data:

    short  the zlib stream is complete but decodes to half the bytes (Pillow's load() fills with zeros)
    cut    the zlib stream stops half way (the IDAT chunk is cut, its CRC recomputed)
    long   the zlib stream decodes to more bytes than the header allows
    """
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data, out, pos = buf.getvalue(), buf.getvalue()[:8], 8
    idat = b""
    while pos < len(data):  # gather the IDAT chunks into one, keep the others
        length, name = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if name == b"IDAT":
            idat += body
            continue
        if name == b"IEND":
            raw = zlib.decompress(idat)
            idat = {"short": zlib.compress(raw[:len(raw) // 2]), "cut": idat[:len(idat) // 2],
                    "long": zlib.compress(raw + bytes(len(raw)))}[kind]
            out += _png_chunk(b"IDAT", idat)
        out += _png_chunk(name, body)
    return out


@pytest.fixture(scope="session")
def corrupt_png():
    """corrupt_png_bytes(image, kind): a PNG that passes header and CRC checks but has bad pixel data."""
    return corrupt_png_bytes
