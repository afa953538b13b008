"""tf.data pipelines: (image bytes or path, labels) -> batches of (uint8 images, float labels)."""

import numpy as np
import tensorflow as tf


def check_positives_bound(labels, max_positives, ids=None):
    """Raises if an image has more positives than the loss's static bound P would keep."""
    if max_positives is None:
        return
    counts = (np.asarray(labels) == 1).sum(axis=1)
    over = np.nonzero(counts > max_positives)[0]
    if over.size:
        worst = int(counts.max())
        names = [ids[i] if ids is not None else f"#{i}" for i in over[:5]]
        raise ValueError(
            f"{over.size} image(s) have more than max_positives={max_positives} positive tags "
            f"(e.g. {', '.join(map(str, names))}; up to {worst}); the loss would drop the extra ones. "
            f"Set max_positives >= {worst}."
        )


def decode_image(data, image_size):
    """Encoded JPEG/PNG/GIF/BMP bytes -> (image_size, image_size, 3) uint8."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def image_label_dataset(
    paths,
    labels,
    image_size,
    batch_size,
    shuffle=False,
    seed=None,
    repeat=False,
    deterministic=None,
    drop_remainder=False,
):
    """Batches of (uint8 images (B, S, S, 3), float32 labels (B, C)) from image files.

    Decoding runs in parallel on the CPU (AUTOTUNE); `deterministic=True` keeps the
    order fixed for a given seed. Under tf.distribute, pass the global batch size
    and let `strategy.experimental_distribute_dataset` split it.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if len(paths) != labels.shape[0]:
        raise ValueError(f"{len(paths)} images but {labels.shape[0]} label rows.")
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(
        lambda path, label: (decode_image(tf.io.read_file(path), image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)
