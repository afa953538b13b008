"""Serving exported SDL models: a local server speaking TF Serving's gRPC and REST APIs
(model_server, servables, rest), clients (clients) and load generation (load); the
`server` and `client` modules are the command lines. Raw TensorFlow is allowed here; the
exports come from sdl_keras.saved_model and decode images with pipelines.decode."""
