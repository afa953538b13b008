"""Serving load: throughput and latency of the local model server under concurrent clients.

    python benchmarks/serving.py                       # a fresh NUS-WIDE-sized small_cnn export
    python benchmarks/serving.py --model_base_path saved_models/demo --model_name demo

Starts `python -m sdl_keras.serving.server` on 127.0.0.1 (a free port), then runs
--clients concurrent gRPC clients x --requests predict requests (one image each, the six
NUS-WIDE photos of ../shared when present, else synthetic JPEGs), bounded by --time_limit,
and prints a table: requests, failures, throughput, p50/p99 latency.
"""

import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_base_path", None, "An export to serve (default: export a fresh random model).")
flags.DEFINE_string("model_name", None, "Its model name (default: the base path's name).")
flags.DEFINE_integer("image_size", 224, "Fresh model: input size.")
flags.DEFINE_integer("num_rows", 7, "Fresh model: M.")
flags.DEFINE_integer("embed_dim", 300, "Fresh model: d.")
flags.DEFINE_integer("num_tags", 1006, "Fresh model: vocabulary size (NUS-WIDE's 925 seen + 81 unseen).")
flags.DEFINE_integer("clients", 8, "Concurrent clients.")
flags.DEFINE_integer("requests", 200, "Requests per client.")
flags.DEFINE_float("time_limit", 300.0, "Seconds after which clients stop sending.")
flags.DEFINE_string("images", None, "A folder of images to send (default: ../shared/reference/images).")
FLAGS = flags.FLAGS


def _images():
    folder = FLAGS.images or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "reference", "images")
    paths = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    if paths:
        return [open(p, "rb").read() for p in paths], f"{len(paths)} photos from {os.path.normpath(folder)}"
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = [tf.io.encode_jpeg(rng.integers(0, 256, (240, 180, 3), dtype=np.uint8)).numpy() for _ in range(6)]
    return images, "6 synthetic 240x180 JPEGs"


def _fresh_export(root):
    import numpy as np

    from sdl_keras.embeddings import TagVocabulary
    from sdl_keras.saved_model import export_model
    from sdl_keras.models import build_sdl_model

    model = build_sdl_model("small_cnn", FLAGS.num_rows, FLAGS.embed_dim, FLAGS.image_size)
    rng = np.random.default_rng(0)
    vocabulary = TagVocabulary(
        [f"tag{i}" for i in range(FLAGS.num_tags)],
        rng.normal(size=(FLAGS.num_tags, FLAGS.embed_dim)),
        unseen=range(FLAGS.num_tags - FLAGS.num_tags // 12, FLAGS.num_tags),
    )
    base = os.path.join(root, "bench")
    export_model(model, vocabulary, base, top_k=10)
    return base, (
        f"small_cnn (random weights), {FLAGS.image_size}px, M={FLAGS.num_rows}, d={FLAGS.embed_dim}, {FLAGS.num_tags} tags"
    )


def main(argv):
    del argv
    from sdl_keras.serving.clients import GrpcClient
    from sdl_keras.serving.load import run_load, start_server_process

    with tempfile.TemporaryDirectory() as root:
        if FLAGS.model_base_path:
            base, described = FLAGS.model_base_path, FLAGS.model_base_path
        else:
            base, described = _fresh_export(root)
        name = FLAGS.model_name or os.path.basename(os.path.normpath(base))
        images, source = _images()
        process, target, _ = start_server_process(base, "--model_name", name, "--grpc_workers", str(max(8, FLAGS.clients)))
        try:
            result = run_load(lambda: GrpcClient(target), name, images, FLAGS.clients, FLAGS.requests, FLAGS.time_limit)
        finally:
            process.terminate()
            process.wait()
    print(f"model: {described}")
    print(f"images: {source}; server: sdl_keras.serving.server on {target}; {os.cpu_count()} CPUs")
    print()
    print("| clients | requests | failed | wall s | requests/s | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {FLAGS.clients} | {result.requests} | {result.failures} | {result.wall_s:.1f} | "
        f"{result.throughput:.1f} | {result.percentile(50):.1f} | {result.percentile(99):.1f} |"
    )
    for error in result.errors:
        print(f"failure: {error}")
    return 1 if result.failures or result.requests < FLAGS.clients * FLAGS.requests else 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
