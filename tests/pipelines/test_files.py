"""tf.data pipelines from image files: unreadable images skipped and counted per pass (or
an error naming the file with strict), and batches spanning passes."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import files
from pipelines.decode import UnreadableImageError
from sdl_keras.training.callbacks import UnreadableImagesLogger
from tests import testing


def image_files(folder):
    """Good images of every kind the pipeline decodes, and 6 it cannot."""
    rgb = testing.smooth_image((40, 30))
    jpeg = testing.encode_image(rgb, "JPEG")
    files = [
        ("rgb.jpg", jpeg), ("gray.jpg", testing.encode_image(rgb.convert("L"), "JPEG")),
        ("cmyk.jpg", testing.encode_image(rgb.convert("CMYK"), "JPEG")), ("rgba.png", testing.encode_image(rgb.convert("RGBA"), "PNG")),
        ("anim.gif", testing.encode_image(rgb, "GIF", save_all=True, append_images=[rgb.rotate(90)])),
        ("image.bmp", testing.encode_image(rgb, "BMP")),
        ("truncated.jpg", jpeg[: len(jpeg) // 2]), ("corrupt.jpg", jpeg[:200] + bytes(range(256)) * 4),
        ("empty.jpg", b""), ("text.jpg", b"not an image"), ("image.tiff", testing.encode_image(rgb, "TIFF")),
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
    dataset = files.image_label_dataset(paths, labels, 16, 4, True, 0, False, None, False)
    batches = list(dataset)
    assert sum(int(x.shape[0]) for x, _ in batches) == 6
    assert batches[0][0].dtype == tf.uint8 and batches[0][1].dtype == tf.float32
    assert dataset.unreadable_images.total == 6

    counter = files.UnreadableImageCounter()
    dataset = files.image_label_dataset(paths, labels, 16, 4, shuffle=True, seed=1, unreadable=counter)
    model = tiny_model(16, 3)
    model.compile("sgd", "mse")
    with caplog.at_level(logging.INFO):
        history = model.fit(dataset, epochs=2, verbose=0, callbacks=[UnreadableImagesLogger(counter)])
    assert history.history["unreadable_images"] == [6, 6]
    assert "Epoch 2: 6 unreadable image(s) skipped (12 in all)." in caplog.text

    repeated = files.image_label_dataset(paths, labels, 16, 3, shuffle=True, seed=1, repeat=True)
    assert sum(int(x.shape[0]) for x, _ in repeated.take(8)) == 24  # 4 passes of 6 good images
    # A pass is counted when its end comes through: passes 1-3 surely have, later ones may
    # have (prefetching runs ahead), and each counts its 6.
    total = repeated.unreadable_images.total
    assert total >= 18 and total % 6 == 0
    # Training's setting: batches span passes, so even data smaller than a batch fills them.
    spanning = files.image_label_dataset(paths, labels, 16, 8, shuffle=True, seed=1, repeat=True, drop_remainder=True)
    assert spanning.element_spec[0].shape == (8, 16, 16, 3)
    assert [tuple(y.shape) for _, y in spanning.take(3)] == [(8, 3)] * 3


def test_strict_names_the_first_unreadable_file(tmp_path):
    paths = image_files(str(tmp_path))
    with pytest.raises(UnreadableImageError, match=r"truncated.jpg: .*6 unreadable image\(s\) in all"):
        files.image_label_dataset(paths, np.zeros((len(paths), 2)), 16, 4, strict=True)
    unreadable = files.find_unreadable(paths)
    assert [os.path.basename(p) for p, _ in unreadable] == [
        "truncated.jpg", "corrupt.jpg", "empty.jpg", "text.jpg", "image.tiff", "missing.jpg"]
    assert "No such file" in unreadable[-1][1] and "{{" not in unreadable[-1][1]


if __name__ == "__main__":
    testing.run(__file__)
