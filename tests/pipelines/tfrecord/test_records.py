"""Reading TFRecord shards: every record with its labels, shuffling and determinism,
sharding between input pipelines, and per-replica batches under tf.distribute."""

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

from pipelines.files import distribute  # noqa: E402
from pipelines.readers.manifest import LabeledImages  # noqa: E402
from pipelines.tfrecord.convert import convert  # noqa: E402
from pipelines.tfrecord.format import shard_pattern  # noqa: E402
from pipelines.tfrecord.records import tfrecord_dataset  # noqa: E402
from tests import testing  # noqa: E402


def tiny_model(image_size, num_classes):
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def make_records(folder, count=12, num_shards=4, num_classes=6):
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"{i}.jpg")
        testing.smooth_image((50 + i, 40), seed=i).save(path)
        paths.append(path)
    labels = np.random.default_rng(0).choice([1.0, 0.0, -1.0], size=(count, num_classes)).astype(np.float32)
    images = LabeledImages(paths, [str(i) for i in range(count)], labels)
    convert(images, os.path.join(folder, "records"), "train", num_shards=num_shards, workers=2)
    return shard_pattern(os.path.join(folder, "records"), "train"), labels


def label_rows(dataset):
    return np.concatenate([y.numpy() for _, y in dataset])


def test_tfrecord_dataset_reads_every_record_with_its_labels(tmp_path):
    pattern, labels = make_records(str(tmp_path))
    in_order = tfrecord_dataset(pattern, 6, 32, 5)
    # Four shards of three records, read interleaved in a fixed order.
    np.testing.assert_array_equal(label_rows(in_order), labels[[0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]])
    images = next(iter(in_order))[0]
    assert images.shape == (5, 32, 32, 3) and images.dtype == tf.uint8

    def shuffled(seed):
        return label_rows(tfrecord_dataset(pattern, 6, 32, 5, shuffle=True, seed=seed, deterministic=True))

    first = shuffled(3)
    np.testing.assert_array_equal(first, shuffled(3))  # deterministic for a seed
    assert not np.array_equal(first, labels)
    np.testing.assert_array_equal(sorted(map(tuple, first)), sorted(map(tuple, labels)))
    with pytest.raises(FileNotFoundError, match="No TFRecord files match"):
        tfrecord_dataset(str(tmp_path / "nothing-*.tfrecord"), 6, 32, 5)


def test_input_pipelines_split_the_shards(tmp_path):
    pattern, labels = make_records(str(tmp_path))
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    rows = label_rows(tfrecord_dataset(pattern, 6, 32, 4, input_context=context))
    np.testing.assert_array_equal(rows, labels[[3, 9, 4, 10, 5, 11]])  # shards 1 and 3 only


def test_per_replica_batches_under_mirrored_strategy(tmp_path):
    pattern, _ = make_records(str(tmp_path))
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    replicas = strategy.num_replicas_in_sync
    global_batch = 4
    distributed = distribute(
        strategy,
        global_batch,
        lambda batch_size, context: tfrecord_dataset(
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
