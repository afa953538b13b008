"""Tag-based image search: build a retrieval index of images, add to it, query it by tag.

    python -m sdl_keras.search build --index=runs/demo_index --run_dir=runs/demo --manifest=data/demo/test.jsonl
    python -m sdl_keras.search build --index=photos_index --model=saved_models/demo \\
        --vocabulary=runs/demo/vocabulary.npz --images=photos/ --approximate --dtype=float16
    python -m sdl_keras.search add --index=photos_index --images=more_photos/ new.jpg
    python -m sdl_keras.search query --index=photos_index --tag="red circle" --tag=square --min_probability=0.5
    python -m sdl_keras.search query --index=photos_index --tag=zebra --word_vectors=wiki.en.vec --method=scann
    python -m sdl_keras.search build --index=milvus:photos.db#photos --model=saved_models/demo --images=photos/

Images: files and folders (--images), a manifest or TFRecords; matrices: an export's `matrix`
signature (--model) or a run's model (--run_dir); an unreadable image is skipped and listed.
Several --tag add their scores; a calibrated model's index gives hits probabilities. `build
--runner=...` runs as an Apache Beam pipeline; Beam's options (--name=value) pass through.
"""

import sys

from absl import app, flags

from sdl_keras import cli

FLAGS = flags.FLAGS
COMMANDS = ("build", "add", "query")


def define_flags():
    from sdl_keras.retrieval import DTYPES, METHODS, MilvusOptions

    flags.DEFINE_string("index", None, "A directory or milvus:URI#COLLECTION (docs/retrieval.md).", required=True)
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
    flags.DEFINE_integer("shard_size", 100_000, "Images per shard (on Beam: about as many, by a hash of the id).")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_bool("overwrite", False, "build: replace an existing index.")
    flags.DEFINE_string("runner", None, "build: run as a Beam pipeline on this runner; Beam's flags pass through.")
    flags.DEFINE_string("milvus_index_type", MilvusOptions.index_type, "Milvus build: FLAT, IVF_FLAT, HNSW, DISKANN...")
    flags.DEFINE_string("milvus_index_params", "{}", 'Milvus build: the index\'s parameters, JSON ({"nlist": 1024}).')
    flags.DEFINE_float("lock_timeout", 0, "Seconds to wait for another writer of the index (-1: as long as it takes).")
    # query
    flags.DEFINE_multi_string("tag", [], "A query tag (repeatable: several tags add their scores).")
    flags.DEFINE_multi_string("text", [], "A free-text query, embedded by --tag_encoder (repeatable).")
    cli.define_tag_encoder_flags("The keras_hub text encoder preset (name or directory) of the index's run.")
    flags.DEFINE_string("vector_file", None, "An .npy of query vectors, (d,) or (T, d), instead of tags.")
    flags.DEFINE_string("word_vectors", None, "Word vectors for tags outside the index's vocabulary.")
    flags.DEFINE_bool("allow_pickle", False, "Allow a pickled --word_vectors file (trusted files only).")
    flags.DEFINE_integer("top_n", 10, "Images to return.")
    flags.DEFINE_enum("method", "exact", list(METHODS), "exact, or scann (index built with --approximate).")
    flags.DEFINE_integer("num_candidates", None, "ScaNN: rows per tag and shard before exact re-scoring.")
    flags.DEFINE_integer("leaves_to_search", None, "ScaNN: partitions searched per shard.")
    flags.DEFINE_string("milvus_search_params", "{}", 'Milvus: search parameters, JSON ({"nprobe": 32}).')
    flags.DEFINE_bool("json", False, "Print the hits as JSON.")
    flags.DEFINE_float("min_probability", None, "Leave out hits where a query tag's probability is below this.")


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"python -m sdl_keras.search {{{'|'.join(COMMANDS)}}} --index=DIR [flags]")
    argv, pipeline_args = cli.split_pipeline_options(argv, FLAGS.runner)
    command, extra = argv[1], argv[2:]
    if pipeline_args and command != "build":
        raise app.UsageError(f"--runner: `build` runs as a Beam pipeline; `{command}` runs in this process.")
    from sdl_keras.retrieval import ScannOptions, backends, encoding, milvus
    from sdl_keras.retrieval.index import format_hits, query_from

    if command == "query":
        cli.no_arguments([command, *extra])
        index = backends.open_index(FLAGS.index)
        query = query_from(FLAGS.tag, FLAGS.vector_file, index.vocabulary, FLAGS.word_vectors, FLAGS.allow_pickle,
                           FLAGS.text, FLAGS.tag_encoder, FLAGS.tag_templates, FLAGS.tag_encoder_cache)
        options = backends.search_options(index, FLAGS.method, FLAGS.num_candidates, FLAGS.leaves_to_search,
                                          milvus.parse_params("--milvus_search_params", FLAGS.milvus_search_params))
        hits = index.search(query, FLAGS.top_n, min_probability=FLAGS.min_probability, **options)
        print(format_hits(query, hits, FLAGS.json))
        return 0
    images = (list(FLAGS.images) + extra, FLAGS.manifest, FLAGS.tfrecords)
    options = dict(shard_size=FLAGS.shard_size, batch_size=FLAGS.batch_size,
                   lock_timeout=None if FLAGS.lock_timeout < 0 else FLAGS.lock_timeout)
    if command == "add":
        index, added, skipped = encoding.add(FLAGS.index, *encoding.image_items(*images), FLAGS.model, FLAGS.run_dir,
                                             **options)
    else:
        options.update(dtype=FLAGS.dtype, aggregation=FLAGS.aggregation, overwrite=FLAGS.overwrite,
                       scann=ScannOptions() if FLAGS.approximate else None, milvus=milvus.MilvusOptions.from_flags(
                           FLAGS.milvus_index_type, FLAGS.milvus_index_params, FLAGS.milvus_search_params))
        if pipeline_args:
            from sdl_keras.retrieval import beam
            index, added, skipped = beam.build(FLAGS.index, pipeline_args, *images, FLAGS.model, FLAGS.run_dir,
                                               FLAGS.vocabulary, **options)
        else:
            index, added, skipped = encoding.build(FLAGS.index, *encoding.image_items(*images), FLAGS.model,
                                                   FLAGS.run_dir, FLAGS.vocabulary, **options)
    print(encoding.summary(command, FLAGS.index, index, added, skipped), file=sys.stderr)
    return 1 if skipped else 0


def run():
    cli.run(main, define_flags, pipeline_options=True)


if __name__ == "__main__":
    run()
