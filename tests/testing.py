"""Shared test helpers: the ../shared reference data, and the keras-hub style
checks every layer, loss, metric and model goes through (config round trip,
.keras save/load, one `fit` step)."""

import os
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def shared_dir():
    """The read-only ../shared folder beside the repository (or $SDL_SHARED_DIR)."""
    return os.environ.get("SDL_SHARED_DIR", os.path.join(os.path.dirname(REPO_ROOT), "shared"))


def shared_path(*parts):
    """A path under ../shared; skips the calling test, saying why, where it is absent."""
    path = os.path.join(shared_dir(), *parts)
    if not os.path.exists(path):
        pytest.skip(
            f"{path} not found: golden and reference data live in ../shared beside the "
            "repository (present in CI, absent on a user's fresh clone)."
        )
    return path


def write_files(folder, files):
    """Writes (name, bytes) pairs into `folder` (bytes None: the path is left missing);
    returns the paths in order."""
    paths = []
    for name, data in files:
        path = os.path.join(folder, name)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        paths.append(path)
    return paths


def run(test_file):
    """Entry point of every test file, so each runs alone as a Bazel py_test."""
    sys.exit(pytest.main([test_file, "-q", "-p", "no:cacheprovider"]))


def check_config_round_trip(obj, cls=None):
    """get_config -> from_config rebuilds an object with the same config."""
    cls = cls or type(obj)
    config = obj.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    return clone


def check_keras_saving(model, inputs, tmp_path, atol=1e-6):
    """A .keras save/load round trip reproduces the model's outputs."""
    import keras

    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(inputs)),
        keras.ops.convert_to_numpy(model(inputs)),
        atol=atol,
    )
    return restored


def check_fit_step(model, inputs, targets, loss, **compile_kwargs):
    """One `fit` step runs, changes the weights and returns a finite loss."""
    import keras

    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    model.compile(optimizer="adam", loss=loss, **compile_kwargs)
    history = model.fit(inputs, targets, batch_size=len(inputs), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.trainable_weights
    assert any(not np.allclose(b, keras.ops.convert_to_numpy(a)) for b, a in zip(before, after))
    return history


def encoded_image(fmt="PNG", size=(32, 32), seed=0, mode="RGB"):
    """Random image bytes in a PIL format, and the pixels PIL decodes from them (H, W, 3)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = buffer.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return data, decoded


def python_env(**extra):
    """Environment for subprocesses running this checkout's commands as a user's shell would:
    without the variables importing TensorFlow set in this process (TF_CPP_MIN_LOG_LEVEL)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF2_BEHAVIOR")}
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def smooth_image(size, seed=0):
    """A smooth PIL image (width, height): resampling methods agree on it up to rounding."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def encode_image(image, fmt, **kwargs):
    """A PIL image's bytes in `fmt`."""
    import io

    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def damage_record(path, record):
    """Flips a byte in the middle of record `record` (from 0) of a TFRecord file, as a bad disk
    block would: its checksum no longer matches."""
    data, offset = bytearray(open(path, "rb").read()), 0
    for _ in range(record):
        offset += 16 + int.from_bytes(data[offset : offset + 8], "little")  # length, its CRC, data, data CRC
    data[offset + 12 + int.from_bytes(data[offset : offset + 8], "little") // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
