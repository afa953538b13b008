"""tf.data pipelines: decode-and-resize fast paths, unreadable images skipped and counted per
epoch (or an error naming the file with strict), TFRecord reading with shuffling,
determinism and sharding, and per-replica batches under tf.distribute."""

import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

# Two logical CPUs for MirroredStrategy; only possible before TensorFlow starts its
# devices (when this file runs alone, as under Bazel).
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:
    pass

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines import data, tfrecord  # noqa: E402
from pipelines.manifest import LabeledImages  # noqa: E402
from tests import testing  # noqa: E402


def smooth(size, seed=0):
    """A smooth image (width, height): resampling methods agree on it up to rounding."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def encode(image, fmt, **kwargs):
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def reference(data_bytes, size, crop):
    image = tf.io.decode_image(data_bytes, channels=3, expand_animations=False).numpy()
    if crop == "center":
        h, w = image.shape[:2]
        s = min(h, w)
        image = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return tf.image.resize(image, (size, size), antialias=True).numpy()


@pytest.mark.parametrize("crop", ["none", "center"])
def test_decode_resize_fast_paths_match_a_full_decode(crop):
    for size in ((901, 700), (300, 460), (90, 70)):  # JPEG scaled by 1/4, 1/2 and 1 while decoding
        image = smooth(size)
        for fmt in ("JPEG", "PNG"):
            encoded = encode(image, fmt, quality=95) if fmt == "JPEG" else encode(image, fmt)
            out = data.decode_resize(tf.constant(encoded), 64, crop)
            assert out.shape == (64, 64, 3) and out.dtype == tf.uint8
            assert np.abs(out.numpy() - reference(encoded, 64, crop)).mean() < 2.0, (size, fmt)
            if fmt == "PNG":  # no fast path: exactly the antialiased resize, rounded
                np.testing.assert_array_equal(out.numpy(), np.floor(reference(encoded, 64, crop) + 0.5))
    with pytest.raises(ValueError, match="crop must be one of"):
        data.decode_resize(tf.constant(b""), 64, "random")


def image_files(folder):
    """Good images of every kind the pipeline decodes, and 6 it cannot."""
    rgb = smooth((40, 30))
    jpeg = encode(rgb, "JPEG")
    files = [
        ("rgb.jpg", jpeg), ("gray.jpg", encode(rgb.convert("L"), "JPEG")),
        ("cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG")), ("rgba.png", encode(rgb.convert("RGBA"), "PNG")),
        ("anim.gif", encode(rgb, "GIF", save_all=True, append_images=[rgb.rotate(90)])),
        ("image.bmp", encode(rgb, "BMP")),
        ("truncated.jpg", jpeg[: len(jpeg) // 2]), ("corrupt.jpg", jpeg[:200] + bytes(range(256)) * 4),
        ("empty.jpg", b""), ("text.jpg", b"not an image"), ("image.tiff", encode(rgb, "TIFF")),
        ("missing.jpg", None),
    ]
    return testing.write_files(folder, files)


def tiny_model(image_size, num_classes):
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def test_unreadable_images_are_skipped_and_counted_each_epoch(tmp_path, caplog):
    paths = image_files(str(tmp_path))
    labels = np.eye(len(paths), 3, dtype=np.float32)
    # The foundation's positional signature still works.
    dataset = data.image_label_dataset(paths, labels, 16, 4, True, 0, False, None, False)
    batches = list(dataset)
    assert sum(int(x.shape[0]) for x, _ in batches) == 6
    assert batches[0][0].dtype == tf.uint8 and batches[0][1].dtype == tf.float32
    assert dataset.unreadable_images.total == 6

    counter = data.UnreadableImageCounter()
    dataset = data.image_label_dataset(paths, labels, 16, 4, shuffle=True, seed=1, unreadable=counter)
    model = tiny_model(16, 3)
    model.compile("sgd", "mse")
    with caplog.at_level(logging.INFO):
        history = model.fit(dataset, epochs=2, verbose=0, callbacks=[data.UnreadableImagesLogger(counter)])
    assert history.history["unreadable_images"] == [6, 6]
    assert "Epoch 2: 6 unreadable image(s) skipped (12 in all)." in caplog.text

    repeated = data.image_label_dataset(paths, labels, 16, 3, shuffle=True, seed=1, repeat=True)
    assert sum(int(x.shape[0]) for x, _ in repeated.take(8)) == 24  # 4 passes of 6 good images
    # A pass is counted when its end comes through: passes 1-3 surely have, later ones may
    # have (prefetching runs ahead), and each counts its 6.
    total = repeated.unreadable_images.total
    assert total >= 18 and total % 6 == 0
    # Training's setting: batches span passes, so even data smaller than a batch fills them.
    spanning = data.image_label_dataset(paths, labels, 16, 8, shuffle=True, seed=1, repeat=True, drop_remainder=True)
    assert spanning.element_spec[0].shape == (8, 16, 16, 3)
    assert [tuple(y.shape) for _, y in spanning.take(3)] == [(8, 3)] * 3


def test_strict_names_the_first_unreadable_file(tmp_path):
    paths = image_files(str(tmp_path))
    with pytest.raises(tfrecord.UnreadableImageError, match=r"truncated.jpg: .*6 unreadable image\(s\) in all"):
        data.image_label_dataset(paths, np.zeros((len(paths), 2)), 16, 4, strict=True)
    unreadable = data.find_unreadable(paths)
    assert [os.path.basename(p) for p, _ in unreadable] == [
        "truncated.jpg", "corrupt.jpg", "empty.jpg", "text.jpg", "image.tiff", "missing.jpg"]
    assert "No such file" in unreadable[-1][1] and "{{" not in unreadable[-1][1]


def make_records(folder, count=12, num_shards=4, num_classes=6):
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"{i}.jpg")
        smooth((50 + i, 40), seed=i).save(path)
        paths.append(path)
    labels = np.random.default_rng(0).choice([1.0, 0.0, -1.0], size=(count, num_classes)).astype(np.float32)
    images = LabeledImages(paths, [str(i) for i in range(count)], labels)
    tfrecord.convert(images, os.path.join(folder, "records"), "train", num_shards=num_shards, workers=2)
    return tfrecord.shard_pattern(os.path.join(folder, "records"), "train"), labels


def label_rows(dataset):
    return np.concatenate([y.numpy() for _, y in dataset])


def test_tfrecord_dataset_reads_every_record_with_its_labels(tmp_path):
    pattern, labels = make_records(str(tmp_path))
    in_order = data.tfrecord_dataset(pattern, 6, 32, 5)
    # Four shards of three records, read interleaved in a fixed order.
    np.testing.assert_array_equal(label_rows(in_order), labels[[0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]])
    images = next(iter(in_order))[0]
    assert images.shape == (5, 32, 32, 3) and images.dtype == tf.uint8

    def shuffled(seed):
        return label_rows(data.tfrecord_dataset(pattern, 6, 32, 5, shuffle=True, seed=seed, deterministic=True))

    first = shuffled(3)
    np.testing.assert_array_equal(first, shuffled(3))  # deterministic for a seed
    assert not np.array_equal(first, labels)
    np.testing.assert_array_equal(sorted(map(tuple, first)), sorted(map(tuple, labels)))
    with pytest.raises(FileNotFoundError, match="No TFRecord files match"):
        data.tfrecord_dataset(str(tmp_path / "nothing-*.tfrecord"), 6, 32, 5)


def test_input_pipelines_split_the_shards(tmp_path):
    pattern, labels = make_records(str(tmp_path))
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    rows = label_rows(data.tfrecord_dataset(pattern, 6, 32, 4, input_context=context))
    np.testing.assert_array_equal(rows, labels[[3, 9, 4, 10, 5, 11]])  # shards 1 and 3 only


def test_per_replica_batches_under_mirrored_strategy(tmp_path):
    pattern, _ = make_records(str(tmp_path))
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    replicas = strategy.num_replicas_in_sync
    global_batch = 4
    distributed = data.distribute(
        strategy,
        global_batch,
        lambda batch_size, context: data.tfrecord_dataset(
            pattern, 6, 32, batch_size, shuffle=True, seed=0, repeat=True, drop_remainder=True, input_context=context
        ),
    )
    images, labels = next(iter(distributed))
    shapes = [tuple(x.shape) for x in strategy.experimental_local_results(images)]
    assert shapes == [(global_batch // replicas, 32, 32, 3)] * replicas
    with strategy.scope():
        model = tiny_model(32, 6)
        model.compile("sgd", "mse")
    history = model.fit(distributed, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])


if __name__ == "__main__":
    testing.run(__file__)
