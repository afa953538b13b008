"""Tag-based image search: build a retrieval index of images, add to it, query it by tag.

    python -m sdl_keras.search build --index=runs/demo_index --run_dir=runs/demo --manifest=data/demo/test.jsonl
    python -m sdl_keras.search build --index=photos_index --model=saved_models/demo \\
        --vocabulary=runs/demo/vocabulary.npz --images=photos/ --approximate --dtype=float16
    python -m sdl_keras.search add --index=photos_index --images=more_photos/ new.jpg
    python -m sdl_keras.search query --index=photos_index --tag="red circle" --tag=square --top_n=10
    python -m sdl_keras.search query --index=photos_index --tag=zebra --word_vectors=wiki.en.vec --method=scann
    python -m sdl_keras.search query --index=photos_index --tag="red circle" --min_probability=0.5

Images come from files and folders (--images), a manifest or TFRecords; matrices from an
export's `matrix` signature (--model) or a run's model (--run_dir); an unreadable image
is skipped and listed (sdl_keras/retrieval/). Several --tag add their scores. A calibrated
model's index gives each hit its tags' probabilities (--min_probability filters by them).
"""

import json
import sys

from absl import app, flags

from sdl_keras import cli

FLAGS = flags.FLAGS
COMMANDS = ("build", "add", "query")


def define_flags():
    from sdl_keras.retrieval import DTYPES, METHODS

    flags.DEFINE_string("index", None, "The index directory.", required=True)
    # build / add
    flags.DEFINE_string("model", None, "An exported SavedModel (saved_models/NAME or one version of it).")
    flags.DEFINE_string("run_dir", None, "A run directory (model.keras, vocabulary.npz, config.json).")
    flags.DEFINE_string("vocabulary", None, "The TagVocabulary .npz stored with the index (default: the run's).")
    flags.DEFINE_multi_string("images", [], "Image files or folders (repeatable; also as arguments).")
    flags.DEFINE_string("manifest", None, "A .jsonl/.csv manifest: its image ids and paths.")
    flags.DEFINE_string("tfrecords", None, "A glob of TFRecord files (pipelines/tfrecord/ records).")
    flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Storage of the matrices (float16 halves it).")
    flags.DEFINE_enum("aggregation", None, ["max", "l2"], "Row aggregation (default: the run's, else max).")
    flags.DEFINE_bool("approximate", False, "Also build ScaNN searchers for --method=scann.")
    flags.DEFINE_integer("shard_size", 100_000, "Images per shard.")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_bool("overwrite", False, "build: replace an existing index.")
    flags.DEFINE_float("lock_timeout", 0, "add: seconds to wait for another writer of the index (its lock, "
                       "INDEX/.writer.lock); 0 fails at once, -1 waits as long as it takes.")
    # query
    flags.DEFINE_multi_string("tag", [], "A query tag (repeatable: several tags add their scores).")
    flags.DEFINE_multi_string("text", [], "A free-text query, embedded by --tag_encoder (repeatable).")
    flags.DEFINE_string("tag_encoder", None, "The keras_hub text encoder preset (name or directory) of the index's run.")
    flags.DEFINE_string("tag_templates", None, "--tag_encoder's prompt templates, '|'-separated (the run's).")
    flags.DEFINE_string("tag_encoder_cache", None, "Folder of --tag_encoder's cached vectors (default ~/.cache/sdl_keras).")
    flags.DEFINE_string("vector_file", None, "An .npy of query vectors, (d,) or (T, d), instead of tags.")
    flags.DEFINE_string("word_vectors", None, "Word vectors for tags outside the index's vocabulary.")
    flags.DEFINE_bool("allow_pickle", False, "Allow a pickled --word_vectors file (trusted files only).")
    flags.DEFINE_integer("top_n", 10, "Images to return.")
    flags.DEFINE_enum("method", "exact", list(METHODS), "exact, or scann (index built with --approximate).")
    flags.DEFINE_integer("num_candidates", None, "ScaNN: rows per tag and shard before exact re-scoring.")
    flags.DEFINE_integer("leaves_to_search", None, "ScaNN: partitions searched per shard.")
    flags.DEFINE_bool("json", False, "Print the hits as JSON.")
    flags.DEFINE_float("min_probability", None, "Leave out of the top_n hits those where a query tag's probability "
                       "is below this (an index with a calibration only).")


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"python -m sdl_keras.search {{{'|'.join(COMMANDS)}}} --index=DIR [flags]")
    command, extra = argv[1], argv[2:]
    from sdl_keras.retrieval import RetrievalIndex, encoding
    from sdl_keras.retrieval.index import format_hits, query_from

    if command == "query":
        cli.no_arguments([command, *extra])
        index = RetrievalIndex.load(FLAGS.index)
        query = query_from(FLAGS.tag, FLAGS.vector_file, index.vocabulary, FLAGS.word_vectors, FLAGS.allow_pickle,
                           FLAGS.text, FLAGS.tag_encoder, FLAGS.tag_templates, FLAGS.tag_encoder_cache)
        hits = index.search(query, FLAGS.top_n, FLAGS.method, num_candidates=FLAGS.num_candidates,
                            leaves_to_search=FLAGS.leaves_to_search, min_probability=FLAGS.min_probability)
        if FLAGS.json:
            print(json.dumps({"query": list(query.names), "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
        else:
            print(format_hits(query, hits))
        return 0
    items, total = encoding.image_items(list(FLAGS.images) + extra, FLAGS.manifest, FLAGS.tfrecords)
    options = dict(shard_size=FLAGS.shard_size, batch_size=FLAGS.batch_size)
    if command == "build":
        from sdl_keras.retrieval import ScannOptions

        index, added, skipped = encoding.build(
            FLAGS.index, items, total, FLAGS.model, FLAGS.run_dir, FLAGS.vocabulary, dtype=FLAGS.dtype,
            aggregation=FLAGS.aggregation, scann=ScannOptions() if FLAGS.approximate else None,
            overwrite=FLAGS.overwrite, **options,
        )
    else:
        index, added, skipped = encoding.add(FLAGS.index, items, total, FLAGS.model, FLAGS.run_dir, **options,
                                             lock_timeout=None if FLAGS.lock_timeout < 0 else FLAGS.lock_timeout)
    print(f"{'Built' if command == 'build' else 'Added to'} {FLAGS.index}: {added} images added, {len(skipped)} "
          f"skipped, {len(index)} in the index ({index.num_rows} x {index.dim} {index.dtype}, "
          f"{'exact and ScaNN' if index.scann_options else 'exact'} search, "
          f"{'calibrated: hits with probabilities' if index.calibration else 'uncalibrated'})", file=sys.stderr)
    return 1 if skipped else 0


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
