"""Tag images through TF Serving (or `sdl_keras.serving.server`) over gRPC or REST.

    python -m sdl_keras.serving.client --server 127.0.0.1:8500 --model demo photo.jpg ...
    python -m sdl_keras.serving.client --rest 127.0.0.1:8501 --model demo photo.jpg
    python -m sdl_keras.serving.client --model demo --tags "beach,sunset,hot dog" \\
        --tag_vectors wiki.en.vec photo.jpg        # open vocabulary, through score_tags

Prints a table, or JSON lines with --format=jsonl (sdl_keras/serving/clients.py).
"""

import json
import os
import sys

from absl import app, flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("server", "127.0.0.1:8500", "The gRPC endpoint HOST:PORT.")
    flags.DEFINE_string("rest", None, "Use the REST API at HOST:PORT (TF Serving's 8501) instead of gRPC.")
    flags.DEFINE_string("model", None, "The served model's name.", required=True)
    flags.DEFINE_integer("version", 0, "The model version (0: the one the server serves by default).")
    flags.DEFINE_string("signature", "serving_default", "serving_default, matrix, score_tags or score_text.")
    flags.DEFINE_string("tags", None, "Comma-separated tags to score through score_tags (any words, seen or not).")
    flags.DEFINE_string("tag_vectors", None, "The word-vector file --tags are looked up in (.vec/.txt/.bin/.npz).")
    flags.DEFINE_multi_string("text", [], "A free-text tag to score through score_text (repeatable; an export "
                              "of a run whose tags come from a text encoder).")
    flags.DEFINE_integer("top_k", 0, "With --tags: print the best K tags (0: all).")
    flags.DEFINE_integer("batch_size", 8, "Images per request.")
    flags.DEFINE_enum("format", "table", ["table", "jsonl"], "Output format.")
    flags.DEFINE_float("timeout", 30.0, "Seconds to wait for each request.")
    flags.DEFINE_bool("metadata", False, "Print the model's status and signatures instead of tagging.")


def main(argv):
    from sdl_keras.serving.clients import ServingClientError, connect, format_table, tag_image_files

    paths, version = argv[1:], FLAGS.version or None
    client = connect(FLAGS.server, FLAGS.rest, FLAGS.timeout)
    try:
        if FLAGS.metadata:
            print(json.dumps({"status": client.status(FLAGS.model, version),
                              "signatures": client.signatures(FLAGS.model, version)}, indent=1))
            return 0
        if not paths:
            raise app.UsageError("Give image files to tag (or --metadata).")
        signature, tags, vectors = FLAGS.signature, None, None
        if FLAGS.tags:
            from sdl_keras.embeddings import load_tag_vectors

            if not FLAGS.tag_vectors:
                raise app.UsageError("--tags needs --tag_vectors, the word-vector file to look them up in.")
            tags, vectors = load_tag_vectors(FLAGS.tag_vectors, [t.strip() for t in FLAGS.tags.split(",") if t.strip()])
            signature = "score_tags"
        elif FLAGS.text:
            signature, tags = "score_text", list(FLAGS.text)
        failed = 0
        for batch, results, error in tag_image_files(client, FLAGS.model, paths, FLAGS.batch_size, signature, version,
                                                     tags, vectors, FLAGS.top_k or None):
            if error is not None:
                print(f"{', '.join(batch)}: {error}", file=sys.stderr)
                failed += len(batch)
            elif FLAGS.format == "jsonl":
                for path, result in zip(batch, results):
                    print(json.dumps({"image": path, **result}))
            else:
                print(format_table([os.path.basename(p) for p in batch], results))
        return 1 if failed else 0
    except ServingClientError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        client.close()


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
