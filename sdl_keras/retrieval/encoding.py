"""Encoding images into a retrieval index: images (files, a manifest, TFRecords) -> the
matrices A of an exported SavedModel's `matrix` signature or a run's Keras model ->
`RetrievalIndex` shards or a `MilvusIndex` collection. The library side of
`python -m sdl_keras.search build|add` (on Apache Beam: `sdl_keras.retrieval.beam`).
"""

import glob
import logging
import os

from sdl_keras.retrieval.backends import create_index, open_index

logger = logging.getLogger(__name__)


class SavedModelEncoder:
    """The `matrix` signature of an export: encoded images -> (B, M, d) float32."""

    def __init__(self, model_path):
        import tensorflow as tf

        from sdl_keras.saved_model import read_calibration_file, resolve_version_dir

        self.path = os.path.abspath(resolve_version_dir(model_path))
        self.calibration, _ = read_calibration_file(self.path)
        self._tf = tf
        signatures = tf.saved_model.load(self.path).signatures
        if "matrix" not in signatures:
            raise ValueError(
                f"{self.path} has no 'matrix' signature (it has {sorted(signatures)}); export it with sdl_keras.export."
            )
        self._signature = signatures["matrix"]
        self.source = {"saved_model": os.path.abspath(model_path)}
        self.aggregation = None  # not recorded in an export: --aggregation, else max
        self.shape = tuple(self._signature.structured_outputs["matrix"].shape[1:])  # (M, d)

    def __call__(self, images):
        return self._signature(images=self._tf.constant(images, dtype=self._tf.string))["matrix"].numpy()


class KerasEncoder:
    """A run directory's model.keras: encoded images -> (B, M, d), decoded as the run decodes them."""

    def __init__(self, run_dir):
        import tensorflow as tf

        from pipelines.decode import decode_images
        from sdl_keras.run_dir import RunDirectory

        run = RunDirectory(run_dir)
        self.model, vocabulary, config = run.load()
        self.calibration, _ = run.calibration_for(run.model_path, vocabulary)
        image_size, crop, mode = config.data.image_size, config.data.crop, config.data.decode_mode
        self._decode = tf.function(lambda images: decode_images(images, image_size, crop, mode))
        self._tf = tf
        self.source = {"run_dir": os.path.abspath(run_dir)}
        self.aggregation = config.loss.aggregation
        self.shape = tuple(self.model.output_shape[1:])  # (M, d)

    def __call__(self, images):
        decoded = self._decode(self._tf.constant(images, dtype=self._tf.string))
        return self.model.predict_on_batch(decoded)


def make_encoder(model=None, run_dir=None):
    if bool(model) == bool(run_dir):
        raise ValueError("Pass exactly one of --model (an exported SavedModel) and --run_dir (a training run).")
    return SavedModelEncoder(model) if model else KerasEncoder(run_dir)


def encoder_from_source(source):
    """The encoder an index records it was built with."""
    if not source:
        raise ValueError("The index does not record its model: pass --model or --run_dir.")
    return make_encoder(source.get("saved_model"), source.get("run_dir"))


# -- image sources: (id, path or bytes) pairs -----------------------------------------------------
def file_items(paths):
    from sdl_keras.tagging import find_images

    return [(path, path) for path in find_images(paths)]


def manifest_items(path):
    from pipelines.readers.manifest import read_manifest

    # Only ids and paths are needed: the tags are read against no vocabulary, without the
    # warning that would list every one of them as unknown.
    manifest_logger = logging.getLogger("pipelines.readers.manifest")
    level = manifest_logger.level
    manifest_logger.setLevel(logging.ERROR)
    try:
        images = read_manifest(path, [], on_unknown="skip")
    finally:
        manifest_logger.setLevel(level)
    return list(zip(images.ids, images.paths))


def tfrecord_items(pattern):
    """(id, encoded bytes) of every record in the TFRecord files matching `pattern`; a
    damaged (corrupted or truncated) record is a ValueError naming its file."""
    import tensorflow as tf

    from pipelines.decode import error_text

    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {pattern!r}.")
    for path in files:
        number = 0
        try:
            for number, record in enumerate(tf.data.TFRecordDataset(path), start=1):
                yield record_item(record.numpy())
        except tf.errors.DataLossError as error:
            raise ValueError(
                f"{path}: record {number + 1} cannot be read ({error_text(error)}): rewrite the file (a shard of "
                "pipelines.to_tfrecord: delete it and rerun its command, which resumes)."
            ) from None


def record_item(serialized):
    """(id, encoded bytes) of one serialized record (pipelines/tfrecord/format.py)."""
    import tensorflow as tf

    feature = tf.train.Example.FromString(serialized).features.feature
    return feature["image/id"].bytes_list.value[0].decode("utf-8"), feature["image/encoded"].bytes_list.value[0]


def read_item(item):
    """(id, bytes, None) for a readable image, (id, None, reason) otherwise; files are read
    here, records carry their bytes."""
    from pipelines.decode import image_header

    image_id, data = item
    try:
        if isinstance(data, str):
            with open(data, "rb") as f:
                data = f.read()
        image_header(data)
        return image_id, data, None
    except (OSError, ValueError) as error:
        return image_id, None, str(error)


def encode_batches(encoder, items, batch_size=32, total=None, skipped=None):
    """Yields (ids, matrices) for the readable images among `items`, batch by batch.

    An unreadable image is left out and its (id, reason) appended to `skipped`; a batch
    the graph fails to decode is retried image by image, so only the bad image is lost.
    """
    from pipelines.progress import Progress

    skipped = [] if skipped is None else skipped
    bar = Progress(total, "image")

    def readable_batches():
        batch, done = [], 0
        for done, item in enumerate(items, start=1):
            image_id, data, reason = read_item(item)
            if reason:
                skipped.append((image_id, reason))
            else:
                batch.append((image_id, data))
            if len(batch) == batch_size:
                yield batch
                batch = []
            bar.update(done, skipped=len(skipped))
        bar.close(done, skipped=len(skipped))
        if batch:
            yield batch

    for batch in readable_batches():
        ids, matrices, failed = encode_batch(encoder, batch)
        skipped.extend(failed)
        if ids:
            yield ids, matrices


def encode_batch(encoder, batch):
    """(ids, (n, M, d) matrices, failed) for a batch of (id, bytes): a batch the graph fails
    to decode is retried image by image, so only the bad images fail, as (id, reason)."""
    import numpy as np
    import tensorflow as tf

    from pipelines.decode import error_text

    try:
        return [image_id for image_id, _ in batch], encoder([data for _, data in batch]), []
    except tf.errors.InvalidArgumentError:
        pass
    ids, matrices, failed = [], [], []
    for image_id, data in batch:
        try:
            matrices.append(encoder([data]))
            ids.append(image_id)
        except tf.errors.InvalidArgumentError as error:
            failed.append((image_id, f"cannot be decoded: {error_text(error)}"))
    return ids, np.concatenate(matrices) if ids else None, failed


def index_images(location, encoder, items, *, create=False, total=None, vocabulary=None, dtype="float32",
                 aggregation=None, scann=None, milvus=None, shard_size=100_000, batch_size=32, overwrite=False,
                 lock_timeout=0):
    """Builds (create=True) or grows the index at `location` (a directory or
    milvus:URI#COLLECTION, see `backends`) from image items; returns (index, added, skipped).

    The add waits `lock_timeout` seconds for another writer of the index (0: fails at once,
    before any image is encoded; None: waits as long as it takes)."""
    skipped = []
    batches = encode_batches(encoder, items, batch_size, total, skipped)
    if create:
        index = create_index(location, *matrix_shape(encoder), dtype, aggregation or encoder.aggregation or "max",
                             vocabulary, scann, milvus, encoder.source, overwrite, index_calibration(encoder, vocabulary))
    else:
        index = open_index(location)
    index.lock_timeout = lock_timeout
    added = index.add(batches, shard_size=shard_size)
    for image_id, reason in skipped:
        logger.warning("Skipped %s: %s", image_id, reason)
    return index, added, skipped


def index_calibration(encoder, vocabulary):
    """The encoder's calibration, stored with the index it builds (its probabilities need the
    vocabulary), or None."""
    if encoder.calibration is not None and vocabulary is None:
        logger.warning("The model is calibrated, but the index gets no vocabulary: it stores no calibration, "
                       "and its hits have no probabilities (pass --vocabulary).")
        return None
    return encoder.calibration


def matrix_shape(encoder):
    """(M, d) of the matrices an encoder computes."""
    if len(encoder.shape) != 2 or None in encoder.shape:
        raise ValueError(f"{encoder.source}: the model's matrices have shape {encoder.shape}, not a fixed (M, d).")
    return tuple(int(n) for n in encoder.shape)


def image_items(paths=(), manifest=None, tfrecords=None):
    """(items, total) of the images to index, given exactly one way: files and folders
    (`paths`), a manifest, or a glob of TFRecord files (whose total is not known ahead)."""
    if sum([bool(paths), bool(manifest), bool(tfrecords)]) != 1:
        raise ValueError("Give the images one way: --images (or paths after the command), --manifest or --tfrecords.")
    if tfrecords:
        return tfrecord_items(tfrecords), None
    items = manifest_items(manifest) if manifest else file_items(list(paths))
    if not items:
        raise FileNotFoundError("No images found to index.")
    return items, len(items)


def load_vocabulary(vocabulary=None, run_dir=None):
    """The TagVocabulary to store with an index: an .npz path, else the run's, else None."""
    from sdl_keras.embeddings import TagVocabulary
    from sdl_keras.run_dir import RunDirectory

    path = vocabulary or (run_dir and RunDirectory(run_dir).vocabulary_path)
    return TagVocabulary.load(path) if path else None


def build(location, items, total=None, model=None, run_dir=None, vocabulary=None, **options):
    """Creates an index from image items with an export (`model`) or a run's Keras model;
    the vocabulary (an .npz path) defaults to the run's. `options` as `index_images`.
    Returns (index, added, skipped)."""
    return index_images(location, make_encoder(model, run_dir), items, create=True, total=total,
                        vocabulary=load_vocabulary(vocabulary, run_dir), **options)


def add(location, items, total=None, model=None, run_dir=None, **options):
    """Adds image items to an index, encoded by the model given or else the one the index
    records. Returns (index, added, skipped)."""
    if model or run_dir:
        encoder = make_encoder(model, run_dir)
    else:
        encoder = encoder_from_source(open_index(location).meta.get("source"))
    return index_images(location, encoder, items, total=total, **options)


def summary(command, location, index, added, skipped):
    """The line `search build|add` ends with: what was added and skipped, what the index holds."""
    return (f"{'Built' if command == 'build' else 'Added to'} {location}: {added} images added, {len(skipped)} "
            f"skipped, {len(index)} in the index ({index.describe()})")
