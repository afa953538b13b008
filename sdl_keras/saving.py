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


def save_weights(model, path):
    """`model.save_weights(path)` (a `.weights.h5` file), written to a temporary file and
    renamed into place; a failed write (a full disk) raises its OSError and leaves the
    previous file.

    Keras leaves its HDF5 file open when a write fails; h5py then flushes it again when the
    object is collected or the interpreter exits, and on a full disk that crashed the
    process (a segmentation fault, exit status 139, after the error was reported). The
    failed file is closed here instead, while the library still runs.
    """
    def write(temporary):
        try:
            model.save_weights(temporary)
        except BaseException:
            _close_hdf5_file(temporary)
            raise

    write_atomically(path, write)


def _close_hdf5_file(path):
    import h5py

    path = os.path.abspath(path)
    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        if os.path.abspath(os.fsdecode(file_id.name)) == path:
            try:
                h5py.File(file_id).close()
            except (OSError, RuntimeError):  # the flush fails again on a full disk; the file closes all the same
                pass
