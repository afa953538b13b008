"""Dataset files -> tf.data batches: readers, the image decoder, TFRecords (TensorFlow;
imports nothing from sdl_keras)."""

from pipelines import environment

environment.configure_tensorflow()  # before TensorFlow is imported
