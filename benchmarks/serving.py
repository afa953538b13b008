"""Serving load: the local model server (`python -m sdl_keras.serving.server`, its own process on
127.0.0.1) under concurrent gRPC clients.

    python benchmarks/serving.py                       # a fresh NUS-WIDE-sized small_cnn export
    python benchmarks/serving.py --model_base_path saved_models/demo --model_name demo
    python benchmarks/serving.py --runs=batching       # only the batching table
    python benchmarks/serving.py --runs=sweep          # only the fault sweep

Two tables:
- batching: requests/s and p50/p99 latency with server-side batching off and on (the
  export's batching_parameters.txt), for each of --clients concurrent clients sending
  --requests predict requests of one image each (the six NUS-WIDE photos of ../shared when
  present, else synthetic JPEGs);
- sweep: --sweep_clients x --sweep_requests requests, a quarter of them bad (garbage, a
  truncated JPEG, an empty batch, NaN tag vectors), all three signatures, while a new version
  is copied into the base path non-atomically: good requests failed (must be 0), bad ones
  refused, and the requests each version answered (the new one from once it is complete).
"""

import glob
import os
import shutil
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
flags.DEFINE_enum("runs", "all", ["all", "batching", "sweep"], "Which tables to measure.")
flags.DEFINE_list("clients", ["8", "32"], "Batching table: concurrent clients, one row each.")
flags.DEFINE_integer("requests", 50, "Batching table: requests per client.")
flags.DEFINE_integer("sweep_clients", 16, "Sweep: concurrent clients.")
flags.DEFINE_integer("sweep_requests", 100, "Sweep: requests per client.")
flags.DEFINE_float("time_limit", 600.0, "Seconds after which clients stop sending, per run.")
flags.DEFINE_string("batching_parameters_file", None, "Batching on: these parameters (default: the export's).")
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
    from sdl_keras.models import build_sdl_model
    from sdl_keras.saved_model import export_model

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


def _server_flags(base, name, batching):
    flags_ = [f"--model_base_path={base}", f"--model_name={name}", "--file_system_poll_wait_seconds=0.5",
              f"--grpc_workers={max(64, 2 * max(int(c) for c in FLAGS.clients), 2 * FLAGS.sweep_clients)}"]
    if batching:
        parameters = FLAGS.batching_parameters_file or os.path.join(base, "batching_parameters.txt")
        flags_ += ["--enable_batching", f"--batching_parameters_file={parameters}"]
    return flags_


def _batching_table(base, name, images):
    from sdl_keras.serving.clients import GrpcClient
    from sdl_keras.serving.load import image_requests, run_load, start_server_process

    rows, failed = [], 0
    for batching in (False, True):
        with start_server_process(*_server_flags(base, name, batching)) as server:
            for clients in (int(c) for c in FLAGS.clients):
                result = run_load(lambda: GrpcClient(server.grpc), name, image_requests(images), clients,
                                  FLAGS.requests, FLAGS.time_limit)
                failed += result.failures + (clients * FLAGS.requests - result.requests)
                rows.append(f"| {'on' if batching else 'off'} | {clients} | {result.requests} | {result.failures} | "
                            f"{result.throughput:.1f} | {result.percentile(50):.1f} | {result.percentile(99):.1f} |")
                rows += [f"failure: {error}" for error in result.errors]
    print("| batching | clients | requests | failed | requests/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return failed


def _sweep(base, name, images, root):
    from sdl_keras.saved_model import list_versions
    from sdl_keras.serving.clients import GrpcClient, ServingClientError
    from sdl_keras.serving.load import VersionDrop, copy_version, mixed_requests, run_load, start_server_process

    # A base path holding only the export's newest version; the same files arrive again as the next one.
    source = os.path.join(base, str(list_versions(base)[-1]))
    served = os.path.join(root, "sweep", name)
    copy_version(source, os.path.join(served, "1"))
    shutil.copyfile(os.path.join(base, "batching_parameters.txt"), os.path.join(served, "batching_parameters.txt"))
    with start_server_process(*_server_flags(served, name, batching=True)) as server:
        control = GrpcClient(server.grpc)

        def status():
            try:
                return dict(control.status(name))
            except ServingClientError:
                return {}

        clients, per_client = FLAGS.sweep_clients, FLAGS.sweep_requests
        drop = VersionDrop(source, os.path.join(served, "2"), 2, status, start_at=per_client // 20,
                           served_from=per_client * 4 // 5)
        embed_dim = control.signatures(name)["score_tags"]["inputs"]["tag_vectors"]["tensor_shape"]["dim"][1]["size"]
        requests = drop.requests(mixed_requests(images, int(embed_dim)))
        result = run_load(lambda: GrpcClient(server.grpc), name, requests, clients, per_client, FLAGS.time_limit)
        drop.join()
        final = status()
        control.close()
    bad = sum(1 for i in range(per_client) if i % 4 == 3) * clients
    print("| clients x requests | good failed | bad refused | answered by v1 / v2 | requests/s | p50 ms | p99 ms | "
          "status after |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    print(f"| {clients} x {per_client} | {result.failures} | {result.refused} of {bad} | "
          f"{result.versions[1]} / {result.versions[2]} | {result.throughput:.1f} | {result.percentile(50):.1f} | "
          f"{result.percentile(99):.1f} | {final} |")
    for error in result.errors:
        print(f"failure: {error}")
    return result.failures + (bad - result.refused) + (0 if drop.served.is_set() else 1)


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        if FLAGS.model_base_path:
            base, described = os.path.abspath(FLAGS.model_base_path), FLAGS.model_base_path
        else:
            base, described = _fresh_export(root)
        name = FLAGS.model_name or os.path.basename(os.path.normpath(base))
        images, source = _images()
        print(f"model: {described}")
        print(f"images: {source}; server: python -m sdl_keras.serving.server on 127.0.0.1; {os.cpu_count()} CPUs")
        failed = 0
        if FLAGS.runs in ("all", "batching"):
            print()
            failed += _batching_table(base, name, images)
        if FLAGS.runs in ("all", "sweep"):
            print()
            failed += _sweep(base, name, images, root)
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
