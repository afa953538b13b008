"""Serving exported SDL models: a local server standing in for TF Serving (model_server wires
server_config, manager, versions, servables, batching, monitoring, grpc_services, serving_api,
rest_api and http_server), the REST JSON format (rest), clients (clients) and load generation
(load); the `server` and `client` modules are the command lines. Raw TensorFlow is allowed
here; the exports come from sdl_keras.saved_model and decode images with pipelines.decode."""
