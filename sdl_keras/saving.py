"""Saving and loading SDL models: every class a saved model may hold is registered by
importing `sdl_keras` (this module does), so `load_model` works in a fresh process.

A compiled model comes back compiled (its SDLLoss with its tag vectors, which live in
the weights file, not the JSON config), so `fit` resumes from a loaded `.keras` file.
"""

import os

import keras

import sdl_keras  # noqa: F401  registers every serializable class
from sdl_keras import keras_compat
from sdl_keras.atomic import write_atomically


def load_model(path, compile=True, safe_mode=True):
    """The Keras model saved at `path` (a `.keras` file), with every sdl_keras class known.

    Args:
        path: the `.keras` file.
        compile: restore the compiled loss, metrics and optimizer (True), or load the
            bare model for inference (False).
        safe_mode: Keras' safe mode; a model whose backbone is an external SavedModel
            (`savedmodel:<dir>`) loads only with False, for files you trust.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    keras_compat.check_version()
    return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)


def save_model(model, path):
    """`model.save(path)`, written to a temporary file and renamed into place, so a kill
    during the save leaves the previous file.

    BatchNormalization layers synchronized across replicas for training
    (`training.distribute.synchronize_batch_norm`) are saved unsynchronized: the flag only
    changes training under tf.distribute, and Keras refuses it on other backends, so the
    file stays loadable everywhere. The traced training step keeps its setting.
    """
    synchronized = [
        layer for layer in keras_compat.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
    ]
    for layer in synchronized:
        layer.synchronized = False
    try:
        write_atomically(path, model.save)
    finally:
        for layer in synchronized:
            layer.synchronized = True
