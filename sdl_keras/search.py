"""Tag-based image search: build a retrieval index of images, add to it, query it by tag.

    python -m sdl_keras.search build --index=runs/demo_index --run_dir=runs/demo --manifest=data/demo/test.jsonl
    python -m sdl_keras.search build --index=photos_index --model=saved_models/demo \\
        --vocabulary=runs/demo/vocabulary.npz --images=photos/ --approximate --dtype=float16
    python -m sdl_keras.search add --index=photos_index --images=more_photos/ new.jpg
    python -m sdl_keras.search query --index=photos_index --tag="red circle" --tag=square --top_n=10
    python -m sdl_keras.search query --index=photos_index --tag=zebra --word_vectors=wiki.en.vec --method=scann
    python -m sdl_keras.search build --flagfile=configs/search.flags   (and query with the same flagfile)

Images come from files and folders (--images, searched recursively), a manifest
(--manifest: its ids and image paths) or TFRecord shards (--tfrecords, a glob: their
image/id and image/encoded). Each image's matrix A is computed by an exported
SavedModel's `matrix` signature (--model) or a run directory's Keras model (--run_dir),
in batches, decoding exactly as serving does; an image that cannot be read is skipped
and listed. `add` uses the model the index was built with unless told otherwise.

A query is one or more tags (--tag, repeated), each looked up in the index's vocabulary
and then in --word_vectors, or vectors from an .npy file (--vector_file, (d,) or (T, d));
several tags combine by the sum of their scores (sdl_keras/retrieval.py). Prints the
top N images with their score and each tag's dominant row (--json: JSON).
"""

import glob
import json
import logging
import os
import sys

COMMANDS = ("build", "add", "query")

logger = logging.getLogger(__name__)


class SavedModelEncoder:
    """The `matrix` signature of an export: encoded images -> (B, M, d) float32."""

    def __init__(self, model_path):
        import tensorflow as tf

        from sdl_keras.tag import resolve_version_dir

        self.path = os.path.abspath(resolve_version_dir(model_path))
        self._tf = tf
        signatures = tf.saved_model.load(self.path).signatures
        if "matrix" not in signatures:
            raise ValueError(
                f"{self.path} has no 'matrix' signature (it has {sorted(signatures)}); export it with sdl_keras.export."
            )
        self._signature = signatures["matrix"]
        self.source = {"saved_model": os.path.abspath(model_path)}
        self.aggregation = None  # not recorded in an export: --aggregation, else max

    def __call__(self, images):
        return self._signature(images=self._tf.constant(images, dtype=self._tf.string))["matrix"].numpy()


class KerasEncoder:
    """A training run's model.keras: encoded images -> (B, M, d), decoded as its export decodes them."""

    def __init__(self, run_dir):
        import tensorflow as tf

        from sdl_keras.export import load_checkpoint, run_settings
        from sdl_keras.serving.decoding import decode_images

        self.model = load_checkpoint(os.path.join(run_dir, "model.keras"))
        settings = run_settings(run_dir)
        image_size = self.model.input_shape[1]
        self._decode = tf.function(lambda images: decode_images(images, image_size, settings["crop"]))
        self._tf = tf
        self.source = {"run_dir": os.path.abspath(run_dir)}
        self.aggregation = settings["aggregation"]

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
    from sdl_keras.tag import find_images

    return [(path, path) for path in find_images(paths)]


def manifest_items(path):
    from pipelines.manifest import read_manifest

    # Only ids and paths are needed: the tags are read against no vocabulary, without the
    # warning that would list every one of them as unknown.
    manifest_logger = logging.getLogger("pipelines.manifest")
    level = manifest_logger.level
    manifest_logger.setLevel(logging.ERROR)
    try:
        images = read_manifest(path, [], on_unknown="skip")
    finally:
        manifest_logger.setLevel(level)
    return list(zip(images.ids, images.paths))


def tfrecord_items(pattern):
    """(id, encoded bytes) of every record in the TFRecord files matching `pattern`."""
    import tensorflow as tf

    from pipelines.tfrecord import FEATURES

    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {pattern!r}.")
    wanted = {k: FEATURES[k] for k in ("image/encoded", "image/id")}
    for record in tf.data.TFRecordDataset(files):
        features = tf.io.parse_single_example(record, wanted)
        yield features["image/id"].numpy().decode("utf-8"), features["image/encoded"].numpy()


def _read(item):
    """(id, bytes, None) for a readable image, (id, None, reason) otherwise; files are read
    here, records carry their bytes."""
    from sdl_keras.serving.decoding import image_header

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
    import keras
    import numpy as np
    import tensorflow as tf

    from sdl_keras.serving.decoding import error_text

    skipped = [] if skipped is None else skipped
    bar = keras.utils.Progbar(total, unit_name="image")

    def readable_batches():
        batch = []
        for done, item in enumerate(items, start=1):
            image_id, data, reason = _read(item)
            if reason:
                skipped.append((image_id, reason))
            else:
                batch.append((image_id, data))
            if len(batch) == batch_size:
                yield batch
                batch = []
            bar.update(done)
        if batch:
            yield batch

    def encode(batch):
        try:
            return [image_id for image_id, _ in batch], encoder([data for _, data in batch])
        except tf.errors.InvalidArgumentError:
            pass
        ids, matrices = [], []
        for image_id, data in batch:
            try:
                matrices.append(encoder([data]))
                ids.append(image_id)
            except tf.errors.InvalidArgumentError as error:
                skipped.append((image_id, f"cannot be decoded: {error_text(error)}"))
        return ids, np.concatenate(matrices) if ids else None

    for batch in readable_batches():
        ids, matrices = encode(batch)
        if ids:
            yield ids, matrices


def index_images(index_dir, encoder, items, *, create=False, total=None, vocabulary=None, dtype="float32",
                 aggregation=None, scann=None, shard_size=100_000, batch_size=32, overwrite=False):
    """Builds (create=True) or grows an index from image items; returns (index, added, skipped)."""
    from sdl_keras import retrieval

    skipped = []
    batches = encode_batches(encoder, items, batch_size, total, skipped)
    if create:
        aggregation = aggregation or encoder.aggregation or "max"
        index = retrieval.build_index(
            index_dir, batches, dtype, aggregation, vocabulary, scann, encoder.source, shard_size, overwrite
        )
        added = len(index)
    else:
        index = retrieval.RetrievalIndex.load(index_dir)
        added = index.add(batches, shard_size)
    for image_id, reason in skipped:
        logger.warning("Skipped %s: %s", image_id, reason)
    return index, added, skipped


def query_from_flags(index, FLAGS):
    import numpy as np

    from sdl_keras import retrieval

    if FLAGS.vector_file:
        if FLAGS.tag:
            raise ValueError("Pass --tag or --vector_file, not both.")
        vectors = np.load(FLAGS.vector_file, allow_pickle=False)
        return retrieval.Query(vectors)
    if not FLAGS.tag:
        raise ValueError("A query needs --tag (repeatable) or --vector_file.")
    return retrieval.tag_query(FLAGS.tag, index.vocabulary, FLAGS.word_vectors, FLAGS.allow_pickle)


def format_hits(query, hits):
    lines = [f"query: {' + '.join(query.names)}", f"{'rank':>4}  {'score':>9}  rows  id"]
    for rank, hit in enumerate(hits, start=1):
        lines.append(f"{rank:>4}  {hit.score:9.4f}  {','.join(map(str, hit.rows)):<4}  {hit.id}")
    return "\n".join(lines)


def main(argv):
    """Runs a command; bad input (a missing index, an unknown tag, a repeated id) exits with
    its message instead of a traceback."""
    try:
        return _run(argv)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise SystemExit(f"sdl_keras.search: {message}") from None


def _run(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise SystemExit(f"Usage: python -m sdl_keras.search {{{'|'.join(COMMANDS)}}} --index=DIR [flags]")
    command, extra = argv[1], argv[2:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sdl_keras import retrieval

    if command == "query":
        if extra:
            raise SystemExit(f"Unexpected arguments: {extra} (tags go in --tag).")
        index = retrieval.RetrievalIndex.load(FLAGS.index)
        query = query_from_flags(index, FLAGS)
        hits = index.search(
            query, FLAGS.top_n, FLAGS.method,
            num_candidates=FLAGS.num_candidates, leaves_to_search=FLAGS.leaves_to_search,
        )
        if FLAGS.json:
            print(json.dumps({"query": list(query.names), "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
        else:
            print(format_hits(query, hits))
        return 0

    sources = [bool(FLAGS.images or extra), bool(FLAGS.manifest), bool(FLAGS.tfrecords)]
    if sum(sources) != 1:
        raise SystemExit("Give the images one way: --images (or paths after the command), --manifest or --tfrecords.")
    if FLAGS.tfrecords:
        items, total = tfrecord_items(FLAGS.tfrecords), None
    else:
        items = manifest_items(FLAGS.manifest) if FLAGS.manifest else file_items(list(FLAGS.images or []) + extra)
        total = len(items)
        if not items:
            raise SystemExit("No images found to index.")
    if command == "build":
        from sdl_keras.embeddings import TagVocabulary

        vocabulary_path = FLAGS.vocabulary or (FLAGS.run_dir and os.path.join(FLAGS.run_dir, "vocabulary.npz"))
        vocabulary = TagVocabulary.load(vocabulary_path) if vocabulary_path else None
        encoder = make_encoder(FLAGS.model, FLAGS.run_dir)
        scann = retrieval.ScannOptions() if FLAGS.approximate else None
        index, added, skipped = index_images(
            FLAGS.index, encoder, items, create=True, total=total, vocabulary=vocabulary, dtype=FLAGS.dtype,
            aggregation=FLAGS.aggregation, scann=scann, shard_size=FLAGS.shard_size, batch_size=FLAGS.batch_size,
            overwrite=FLAGS.overwrite,
        )
    else:
        index = retrieval.RetrievalIndex.load(FLAGS.index)
        if FLAGS.model or FLAGS.run_dir:
            encoder = make_encoder(FLAGS.model, FLAGS.run_dir)
        else:
            encoder = encoder_from_source(index.meta.get("source"))
        index, added, skipped = index_images(
            FLAGS.index, encoder, items, total=total, shard_size=FLAGS.shard_size, batch_size=FLAGS.batch_size
        )
    print(
        f"{'Built' if command == 'build' else 'Added to'} {FLAGS.index}: {added} images added, {len(skipped)} skipped, "
        f"{len(index)} in the index ({index.num_rows} x {index.dim} {index.dtype}, "
        f"{'exact and ScaNN' if index.scann_options else 'exact'} search)",
        file=sys.stderr,
    )
    return 1 if skipped else 0


def define_flags():
    from absl import flags

    from sdl_keras.retrieval import DTYPES, METHODS

    flags.DEFINE_string("index", None, "The index directory.", required=True)
    # build / add
    flags.DEFINE_string("model", None, "An exported SavedModel (saved_models/NAME or one version of it).")
    flags.DEFINE_string("run_dir", None, "A training run directory (model.keras, vocabulary.npz, config.json).")
    flags.DEFINE_string("vocabulary", None, "The TagVocabulary .npz stored with the index (default: the run's).")
    flags.DEFINE_multi_string("images", [], "Image files or folders (repeatable; also as arguments).")
    flags.DEFINE_string("manifest", None, "A .jsonl/.csv manifest: its image ids and paths.")
    flags.DEFINE_string("tfrecords", None, "A glob of TFRecord files (pipelines/tfrecord.py records).")
    flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Storage of the matrices (float16 halves it).")
    flags.DEFINE_enum("aggregation", None, ["max", "l2"], "Row aggregation (default: the run's, else max).")
    flags.DEFINE_bool("approximate", False, "Also build ScaNN searchers for --method=scann.")
    flags.DEFINE_integer("shard_size", 100_000, "Images per shard.")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_bool("overwrite", False, "build: replace an existing index.")
    # query
    flags.DEFINE_multi_string("tag", [], "A query tag (repeatable: several tags add their scores).")
    flags.DEFINE_string("vector_file", None, "An .npy of query vectors, (d,) or (T, d), instead of tags.")
    flags.DEFINE_string("word_vectors", None, "Word vectors for tags outside the index's vocabulary.")
    flags.DEFINE_bool("allow_pickle", False, "Allow a pickled --word_vectors file (trusted files only).")
    flags.DEFINE_integer("top_n", 10, "Images to return.")
    flags.DEFINE_enum("method", "exact", list(METHODS), "exact, or scann (index built with --approximate).")
    flags.DEFINE_integer("num_candidates", None, "ScaNN: rows per tag and shard before exact re-scoring.")
    flags.DEFINE_integer("leaves_to_search", None, "ScaNN: partitions searched per shard.")
    flags.DEFINE_bool("json", False, "Print the hits as JSON.")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
