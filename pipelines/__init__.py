"""Dataset readers and tf.data input pipelines (raw TensorFlow lives here, not in sdl_keras/)."""
