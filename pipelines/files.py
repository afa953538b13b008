"""tf.data pipelines from image files: (paths, label matrix) -> batches of (uint8 images,
float labels), and the counter of the unreadable images they drop.

Decoding and resizing run in parallel on the CPU (AUTOTUNE) through
`pipelines.decode.decode_resize`, then batching and prefetching; augmentation runs on the
device, in the model (sdl_keras.layers.Augmentation). Large datasets should use TFRecord
shards instead (pipelines.tfrecord): a few hundred sequential files, not millions of
small ones.

Unreadable image files (missing, zero-byte, truncated, corrupt, not an image) never
stop a run: they are dropped and counted per pass over the data in an
`UnreadableImageCounter` (the training loop logs it each epoch). With `strict=True` the
first one is an error naming the file instead.
"""

import logging
import re

import numpy as np
import tensorflow as tf

from pipelines.decode import UnreadableImageError, check_crop, decode_resize

logger = logging.getLogger(__name__)


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


class UnreadableImageCounter:
    """How many images pipelines dropped as unreadable. A pipeline adds a pass's count when
    the pass ends, so over an epoch that is one pass, the increase of `total` is that
    epoch's count. Give each pipeline its own counter to tell them apart. `what` and
    `detail()` say what was counted, for the log."""

    what = "unreadable image(s)"

    def __init__(self, name="unreadable_images"):
        self.name = name
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name=name)

    @property
    def total(self):
        return int(self.variable.numpy())

    def detail(self):
        """Where the dropped elements were and what to do about them ("" when nothing to add)."""
        return ""


def _decoded_batches(one_pass, num_images, decode, batch_size, drop_remainder, repeat, counter, strict,
                     deterministic):
    """Maps `decode` over the `num_images` elements of `one_pass` in parallel and batches
    the results, dropping the elements whose decoding fails and adding each pass's number
    of them to `counter`.

    Batches are first formed within a pass, so the count costs one addition per batch:
    the batches' sizes are summed, and an element-free dataset concatenated after each
    pass (concatenate moves on only when the pass is exhausted) adds `num_images` minus
    that sum to the counter. Counting per image, with a variable update in the decode
    function, costs a tenth of the decode's time. Repeated, the passes' batches are
    then `rebatch`ed (slices and concatenations of whole batches), so batches span
    passes and a dataset smaller than one batch still yields full ones.
    """
    decoded = tf.Variable(0, dtype=tf.int64, trainable=False)
    dataset = one_pass.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if not strict:
        dataset = dataset.ignore_errors()

    def count(*batch):
        with tf.control_dependencies([decoded.assign_add(tf.shape(batch[0], out_type=tf.int64)[0])]):
            return tf.nest.map_structure(tf.identity, batch)

    dataset = dataset.batch(batch_size).map(count)

    def end_of_pass(_):
        with tf.control_dependencies([counter.variable.assign_add(num_images - decoded)]):
            with tf.control_dependencies([decoded.assign(0)]):
                return tuple(tf.zeros([d or 0 for d in spec.shape], spec.dtype) for spec in dataset.element_spec)

    end = tf.data.Dataset.range(1).map(end_of_pass).filter(lambda *_: False)
    dataset = dataset.concatenate(end)
    if repeat:
        return dataset.repeat().rebatch(batch_size, drop_remainder=drop_remainder)
    if drop_remainder:
        dataset = dataset.filter(lambda *batch: tf.shape(batch[0])[0] == batch_size).map(
            lambda *batch: tuple(tf.ensure_shape(t, [batch_size, *t.shape[1:]]) for t in batch)
        )
    return dataset


def find_unreadable(paths, crop="none"):
    """The paths among `paths` that the pipelines cannot read or decode, in order, each
    with the reason TensorFlow gives. Decodes every file once, in parallel."""
    paths = list(paths)
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    dataset = dataset.map(
        # reduce_max uses the pixels, so the decode cannot be optimized away.
        lambda i, path: (i, tf.reduce_max(decode_resize(tf.io.read_file(path), 32, crop))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    ).ignore_errors()
    readable = {int(i) for i, _ in dataset.as_numpy_iterator()}
    unreadable = []
    for i in sorted(set(range(len(paths))) - readable):
        try:
            decode_resize(tf.io.read_file(paths[i]), 32, crop)
            reason = "unreadable"
        except (tf.errors.OpError, ValueError) as error:
            reason = re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", getattr(error, "message", str(error))).strip()
        unreadable.append((paths[i], reason))
    return unreadable


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
    crop="none",
    strict=False,
    unreadable=None,
    decode_mode="fast",
):
    """Batches of (uint8 images (B, S, S, 3), float32 labels (B, C)) from image files.

    Decoding runs in parallel on the CPU (AUTOTUNE); `deterministic=False` lets images
    come out as they are ready, otherwise the order is fixed for a seed. Unreadable
    files (including formats TensorFlow has no decoder for, such as TIFF: convert
    those to TFRecords) are dropped and counted in `unreadable` (a new
    UnreadableImageCounter if None; also `dataset.unreadable_images`); `strict=True`
    first checks every file (`find_unreadable`) and raises UnreadableImageError naming
    the first bad one. Images are decoded by `pipelines.decode.decode_resize` with `crop`
    and `decode_mode` (a run's DataConfig). Under tf.distribute, pass the global batch size and let
    `strategy.experimental_distribute_dataset` split it.
    """
    check_crop(crop, decode_mode)
    paths = [str(p) for p in paths]
    labels = np.asarray(labels, dtype=np.float32)
    if len(paths) != labels.shape[0]:
        raise ValueError(f"{len(paths)} images but {labels.shape[0]} label rows.")
    if strict:
        bad = find_unreadable(paths, crop)
        if bad:
            raise UnreadableImageError(bad[0][0], f"{bad[0][1]} ({len(bad)} unreadable image(s) in all)")
    counter = unreadable or UnreadableImageCounter()
    # Images carry their row number, and labels are gathered a batch at a time: slicing
    # a label row per image costs more.
    dataset = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths))))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = _decoded_batches(
        dataset,
        len(paths),
        lambda path, row: (decode_resize(tf.io.read_file(path), image_size, crop, decode_mode), row),
        batch_size,
        drop_remainder,
        repeat,
        counter,
        strict,
        deterministic,
    )
    labels = tf.constant(labels)
    dataset = dataset.map(lambda images, rows: (images, tf.gather(labels, rows))).prefetch(tf.data.AUTOTUNE)
    # Kept on the dataset so callers can hand it to UnreadableImagesLogger.
    dataset.unreadable_images = counter
    return dataset


def distribute(strategy, global_batch_size, build):
    """A distributed dataset with per-replica batching: `build(batch_size, input_context)`
    makes one input pipeline's tf.data.Dataset, with batch_size the per-replica size."""
    return strategy.distribute_datasets_from_function(
        lambda context: build(context.get_per_replica_batch_size(global_batch_size), context)
    )
