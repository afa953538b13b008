"""tf.data pipelines: (image bytes or path, labels) -> batches of (uint8 images, float labels).

Two sources: image files with a label matrix (`image_label_dataset`), and TFRecord
shards written by pipelines.tfrecord (`tfrecord_dataset`, what large datasets should
use: a few hundred sequential files instead of millions of small ones). Both decode
and resize in parallel on the CPU (AUTOTUNE), with libjpeg's fast paths where they
save work (`decode_resize`), and batch and prefetch; augmentation runs on the device,
in the model (pipelines/augment.py).

Unreadable image files (missing, zero-byte, truncated, corrupt, not an image) never
stop a run: they are dropped and counted per pass over the data in an
`UnreadableImageCounter`, which `UnreadableImagesLogger` logs each epoch. With
`strict=True` the first one is an error naming the file instead. TFRecords hold only
images that decoded at conversion, where the unreadable ones were listed.
"""

import functools
import logging
import re

import keras
import numpy as np
import tensorflow as tf

from pipelines.tfrecord import UnreadableImageError, parse_example

logger = logging.getLogger(__name__)

CROPS = ("none", "center")
# libjpeg can scale by these factors while decoding (it computes fewer DCT coefficients).
_JPEG_RATIOS = (1, 2, 4, 8)


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


def _to_uint8(image):
    # Bilinear and antialiased resizing average their inputs, so values stay in [0, 255]:
    # rounding needs no clipping.
    return tf.cast(image + 0.5, tf.uint8)


def _decode_jpeg(data, crop, shape, ratio):
    """JPEG of `shape` -> uint8 image decoded by libjpeg at 1/`ratio` scale (fewer DCT
    coefficients, a smaller image); with crop="center" only the central square."""
    if crop == "center":
        # The crop window is in the scaled image's coordinates (libjpeg rounds up).
        scaled_h, scaled_w = -(-shape[0] // ratio), -(-shape[1] // ratio)
        side = tf.minimum(scaled_h, scaled_w)
        window = tf.stack([(scaled_h - side) // 2, (scaled_w - side) // 2, side, side])
        return tf.io.decode_and_crop_jpeg(data, window, channels=3, ratio=ratio)
    return tf.io.decode_jpeg(data, channels=3, ratio=ratio)


def _decode_other(data, image_size, crop):
    """PNG/GIF/BMP/WebP -> (S, S, 3) uint8, antialiased: no decoder scaling helps here."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    if crop == "center":
        shape = tf.shape(image)
        side = tf.minimum(shape[0], shape[1])
        image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)
    return _to_uint8(tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), antialias=True))


@functools.cache
def _stand_in_jpeg():
    with tf.init_scope():  # a constant, computed once even when first asked for in a graph
        return tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def _check_crop(crop):
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}.")


def decode_resize(data, image_size, crop="none"):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> (image_size, image_size, 3) uint8.

    crop="none" resizes the whole image to a square (as the official code does);
    "center" keeps the aspect ratio and takes the central square. JPEGs use libjpeg's
    fast paths (`_decode_jpeg`): decoding at reduced scale, and decode-and-crop.
    """
    _check_crop(crop)
    is_jpeg = tf.io.is_jpeg(data)
    # JPEGs decode at the smallest of libjpeg's scales 1/1, 1/2, 1/4, 1/8 that keeps the
    # short side at least S, so the resize after it shrinks less than 2x and plain bilinear
    # suffices. One switch, over those scales and the other formats, each branch as small
    # as it can be: in tf.data every branch taken costs a function call, more the larger
    # the branch. extract_jpeg_shape fails on other formats, so they show it a small JPEG
    # instead; their branch index ignores the result.
    shape = tf.io.extract_jpeg_shape(tf.where(is_jpeg, data, _stand_in_jpeg()))
    short_side = tf.minimum(shape[0], shape[1])
    scale_index = tf.reduce_sum(tf.cast(short_side >= [r * image_size for r in _JPEG_RATIOS[1:]], tf.int32))
    branches = [functools.partial(_decode_jpeg, data, crop, shape, r) for r in _JPEG_RATIOS]
    branches.append(functools.partial(_decode_other, data, image_size, crop))
    image = tf.switch_case(tf.where(is_jpeg, scale_index, len(_JPEG_RATIOS)), branches)
    # Other formats are at size already: resizing to the same size with half-pixel centers
    # returns the input exactly. TF's bilinear kernel is about 2x faster on float input
    # than on uint8, with identical results.
    image = _to_uint8(tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size)))
    image.set_shape([image_size, image_size, 3])
    return image


class UnreadableImageCounter:
    """How many images pipelines dropped as unreadable. A pipeline adds a pass's count when
    the pass ends, so over an epoch that is one pass, the increase of `total` is that
    epoch's count. Give each pipeline its own counter to tell them apart."""

    def __init__(self, name="unreadable_images"):
        self.name = name
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name=name)

    @property
    def total(self):
        return int(self.variable.numpy())


class UnreadableImagesLogger(keras.callbacks.Callback):
    """Logs, after each epoch, how many unreadable images the training pipeline dropped,
    and adds the count to the epoch's logs (so to the History and TensorBoard)."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self._last = counter.total

    def on_epoch_end(self, epoch, logs=None):
        total = self.counter.total
        count, self._last = total - self._last, total
        if logs is not None:
            logs[self.counter.name] = count
        log = logger.warning if count else logger.info
        log("Epoch %d: %d unreadable image(s) skipped (%d in all).", epoch + 1, count, total)


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
):
    """Batches of (uint8 images (B, S, S, 3), float32 labels (B, C)) from image files.

    Decoding runs in parallel on the CPU (AUTOTUNE); `deterministic=False` lets images
    come out as they are ready, otherwise the order is fixed for a seed. Unreadable
    files (including formats TensorFlow has no decoder for, such as TIFF: convert
    those to TFRecords) are dropped and counted in `unreadable` (a new
    UnreadableImageCounter if None; also `dataset.unreadable_images`); `strict=True`
    first checks every file (`find_unreadable`) and raises UnreadableImageError naming
    the first bad one. Under tf.distribute, pass the global batch size and let
    `strategy.experimental_distribute_dataset` split it.
    """
    _check_crop(crop)
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
        lambda path, row: (decode_resize(tf.io.read_file(path), image_size, crop), row),
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


def tfrecord_dataset(
    file_pattern,
    num_classes,
    image_size,
    batch_size,
    shuffle=False,
    seed=None,
    repeat=False,
    deterministic=None,
    drop_remainder=False,
    crop="none",
    shuffle_buffer=8192,
    input_context=None,
):
    """Batches of (uint8 images (B, S, S, 3), float32 labels (B, C) with -1 unknowns) from
    TFRecord shards (pipelines.tfrecord; `file_pattern` a glob or a list of files).

    Shards are read `interleave`d in parallel; with `shuffle`, the shard order is
    shuffled each pass and records go through a `shuffle_buffer`. Records are parsed
    and their images decoded one by one, in parallel. `deterministic=False`
    lets records come out as they are ready (faster when a read stalls); True or None
    keeps the order fixed for a seed. The converter stored only images that decode,
    so nothing is skipped here: a record that fails is damaged storage, an error.
    Under tf.distribute, build it in `strategy.distribute_datasets_from_function` with
    the per-replica batch size and the `input_context`, which splits the shards
    between input pipelines (see `distribute`).
    """
    _check_crop(crop)
    files = sorted(tf.io.gfile.glob(file_pattern)) if isinstance(file_pattern, str) else list(file_pattern)
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {file_pattern!r}.")
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise ValueError(
                f"{len(files)} TFRecord files for {input_context.num_input_pipelines} input pipelines: "
                "convert with more shards (--num_shards)."
            )
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=1 << 22),
        cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic is not False,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def decode(serialized):
        image, labels, _ = parse_example(serialized, num_classes)
        return decode_resize(image, image_size, crop), labels

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def distribute(strategy, global_batch_size, build):
    """A distributed dataset with per-replica batching: `build(batch_size, input_context)`
    makes one input pipeline's tf.data.Dataset, with batch_size the per-replica size."""
    return strategy.distribute_datasets_from_function(
        lambda context: build(context.get_per_replica_batch_size(global_batch_size), context)
    )
