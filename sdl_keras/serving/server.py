"""A local model server speaking TF Serving's gRPC and REST APIs, for where its binary
cannot be installed (sdl_keras/serving/model_server.py).

    python -m sdl_keras.serving.server --model_base_path saved_models/demo --port 8500 \\
        [--rest_api_port 8501] [--model_name demo]

It binds 127.0.0.1 unless --host says otherwise.
"""

from absl import flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    from sdl_keras.serving.servables import Limits

    defaults = Limits()
    flags.DEFINE_string("model_base_path", None, "The folder of integer version folders (saved_models/NAME).",
                        required=True)
    flags.DEFINE_string("model_name", None, "The model name clients ask for (default: the base path's name).")
    flags.DEFINE_string("host", "127.0.0.1", "The address to bind; 0.0.0.0 exposes the server to the network.")
    flags.DEFINE_integer("port", 8500, "The gRPC port (0: any free port).")
    flags.DEFINE_integer("rest_api_port", 0, "The REST port; 0 disables REST (as in TF Serving).")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "How often the base path is polled for new versions.")
    flags.DEFINE_integer("max_request_bytes", defaults.max_request_bytes, "Largest request message (gRPC and REST).")
    flags.DEFINE_integer("max_image_bytes", defaults.max_image_bytes, "Largest encoded image.")
    flags.DEFINE_integer("max_image_side", defaults.max_image_side, "Largest image width or height in pixels.")
    flags.DEFINE_integer("max_batch_size", defaults.max_batch_size, "Most images in one request.")
    flags.DEFINE_integer("grpc_workers", 8, "Threads answering gRPC requests.")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras.serving.model_server import ModelServer
    from sdl_keras.serving.servables import Limits

    limits = Limits(FLAGS.max_request_bytes, FLAGS.max_image_bytes, FLAGS.max_image_side, FLAGS.max_batch_size)
    server = ModelServer(
        FLAGS.model_base_path, FLAGS.model_name, FLAGS.host, FLAGS.port, FLAGS.rest_api_port or None, limits,
        FLAGS.file_system_poll_wait_seconds, FLAGS.grpc_workers,
    ).start()
    rest = f", REST on {server.host}:{server.rest_port}" if server.rest_port else ""
    # One parseable line for scripts that start the server on port 0 (serving.load.start_server_process).
    print(f"Serving model {server.model.name} from {FLAGS.model_base_path}: gRPC on {server.host}:{server.grpc_port}"
          f"{rest}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
