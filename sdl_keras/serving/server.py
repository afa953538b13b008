"""A model server speaking TF Serving's gRPC and REST APIs, with TF Serving's flags, for where
its binary cannot be installed (sdl_keras/serving/model_server.py).

    python -m sdl_keras.serving.server --model_base_path saved_models/demo --port 8500 --rest_api_port 8501
    python -m sdl_keras.serving.server --model_config_file saved_models/demo/models.config \\
        --enable_batching --batching_parameters_file saved_models/demo/batching_parameters.txt \\
        --monitoring_config_file saved_models/demo/monitoring.config --rest_api_port 8501

It binds 127.0.0.1 unless --host says otherwise (TF Serving binds every interface), and
drains on SIGTERM: in-flight requests finish, then it exits 0.
"""

from absl import flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    from sdl_keras.serving.model_server import ServerOptions
    from sdl_keras.serving.servables import Limits

    limits, options = Limits(), ServerOptions(models=[])
    # TF Serving's own flags (tensorflow_serving/model_servers/main.cc), meaning what they mean there.
    flags.DEFINE_integer("port", 8500, "The gRPC port (0: any free port).")
    flags.DEFINE_integer("rest_api_port", 0, "The REST API port; 0 disables REST (as in TF Serving).")
    flags.DEFINE_string("model_config_file", None, "A ModelServerConfig text proto: models, version policies, labels.")
    flags.DEFINE_integer("model_config_file_poll_wait_seconds", 0, "Re-read --model_config_file this often (0: never).")
    flags.DEFINE_string("model_base_path", None, "One model's folder of integer version folders (saved_models/NAME).")
    flags.DEFINE_string("model_name", None, "With --model_base_path: the model's name (default: the folder's name).")
    flags.DEFINE_float("file_system_poll_wait_seconds", options.file_system_poll_wait_seconds,
                       "How often base paths are polled for new and removed versions.")
    flags.DEFINE_bool("enable_batching", False, "Batch requests to the same signature on the server.")
    flags.DEFINE_string("batching_parameters_file", None, "A BatchingParameters text proto (with --enable_batching).")
    flags.DEFINE_string("monitoring_config_file", None, "A MonitoringConfig text proto: Prometheus metrics on REST.")
    flags.DEFINE_integer("rest_api_timeout_in_ms", int(options.rest_api_timeout_s * 1000),
                         "A REST request must arrive whole within this time; idle connections close after it.")
    flags.DEFINE_integer("rest_api_num_threads", options.rest_api_num_threads, "Threads answering REST requests.")
    flags.DEFINE_integer("max_num_load_retries", options.retry.max_retries, "Retries of a version that fails to load.")
    flags.DEFINE_integer("load_retry_interval_micros", int(options.retry.interval_s * 1e6),
                         "The first retry's delay; each later retry waits twice the one before.")
    # This server's own.
    flags.DEFINE_string("host", options.host, "The address to bind; 0.0.0.0 exposes the server to the network.")
    flags.DEFINE_integer("rest_api_max_connections", options.rest_api_max_connections,
                         "REST connections served at once; more wait in the listen backlog.")
    flags.DEFINE_integer("grpc_workers", options.grpc_workers, "Threads answering gRPC requests.")
    flags.DEFINE_float("drain_timeout_seconds", options.drain_timeout_s,
                       "On SIGTERM, how long in-flight requests may take to finish.")
    flags.DEFINE_integer("max_request_bytes", limits.max_request_bytes, "Largest request message (gRPC and REST).")
    flags.DEFINE_integer("max_image_bytes", limits.max_image_bytes, "Largest encoded image.")
    flags.DEFINE_integer("max_image_side", limits.max_image_side, "Largest image width or height in pixels.")
    flags.DEFINE_integer("max_image_pixels", limits.max_image_pixels, "Largest image width x height, from its header.")
    flags.DEFINE_integer("max_batch_size", limits.max_batch_size, "Most images in one request.")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras.serving.model_server import ModelServer, server_options
    from sdl_keras.serving.servables import Limits
    from sdl_keras.serving.versions import RetryPolicy

    options = server_options(
        FLAGS.model_config_file, FLAGS.model_base_path, FLAGS.model_name, FLAGS.enable_batching,
        FLAGS.batching_parameters_file, FLAGS.monitoring_config_file, host=FLAGS.host, port=FLAGS.port,
        rest_api_port=FLAGS.rest_api_port, rest_api_timeout_s=FLAGS.rest_api_timeout_in_ms / 1000,
        rest_api_num_threads=FLAGS.rest_api_num_threads, rest_api_max_connections=FLAGS.rest_api_max_connections,
        limits=Limits(FLAGS.max_request_bytes, FLAGS.max_image_bytes, FLAGS.max_image_side, FLAGS.max_image_pixels,
                      FLAGS.max_batch_size),
        file_system_poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
        model_config_file_poll_wait_seconds=FLAGS.model_config_file_poll_wait_seconds,
        retry=RetryPolicy(FLAGS.max_num_load_retries, FLAGS.load_retry_interval_micros / 1e6),
        grpc_workers=FLAGS.grpc_workers, drain_timeout_s=FLAGS.drain_timeout_seconds,
    )
    server = ModelServer(options).start()
    # One parseable line for scripts that start the server on port 0 (serving.load.start_server_process).
    print(server.describe(), flush=True)
    server.serve_until_signalled()
    return 0


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
