"""Serving exported SDL models: in-graph image decoding (decoding), a local server speaking
TF Serving's gRPC and REST APIs (server, servables, rest), clients (client) and load
generation (load). Raw TensorFlow is allowed here; the exports come from sdl_keras.export."""
