"""Each private Keras API the project relies on (sdl_keras/keras_compat.py) still behaves
as relied on: a Keras upgrade that changes one fails here, naming it, before it breaks a
training run."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from sdl_keras import keras_compat
from sdl_keras.layers import Augmentation
from tests import testing


def small_model():
    inputs = keras.Input((8, 8, 3))
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="inner_bn")(inner_in), name="inner")
    x = Augmentation(rand_augment=True, seed=0, name="augmentation")(inputs)
    x = inner(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(x))


def data(n=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3)).astype("float32"), rng.standard_normal((n, 2)).astype("float32")


def test_the_installed_keras_is_in_the_known_good_range():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert keras_compat.check_version(), (keras.__version__, keras_compat.KNOWN_GOOD)
    with pytest.warns(UserWarning, match="known to work with Keras"):
        keras_compat._warned.clear()
        assert not keras_compat.check_version("99.0.0")
    keras_compat._warned.clear()


def test_flatten_layers_reaches_nested_models_and_sublayers_of_custom_layers():
    names = {layer.name for layer in keras_compat.flatten_layers(small_model())}
    assert {"inner_bn", "augmentation", "out"} <= names
    kinds = {type(layer).__name__ for layer in keras_compat.flatten_layers(small_model())}
    assert {"RandAugment", "Cutout", "RandomResizedCrop"} <= kinds  # Augmentation's own stages


def test_fit_builds_its_compile_state_through_the_hook_build_for_fit_turns_off():
    model = small_model()
    model.compile("sgd", "mse")
    calls = []
    original = model._maybe_symbolic_build
    model._maybe_symbolic_build = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    model.fit(*data(), epochs=1, verbose=0)
    assert calls, "Keras' fit no longer calls _maybe_symbolic_build: revisit keras_compat.build_for_fit"

    model = small_model()
    model.compile("sgd", "mse", metrics=["mae"])
    images, targets = data(1)
    keras_compat.build_for_fit(model, tf.distribute.get_strategy(), (images, targets))
    assert model.optimizer.built and model.built
    history = model.fit(*data(), epochs=1, verbose=0)
    assert {"loss", "mae"} <= set(history.history)


def test_fit_runs_the_instance_train_step_that_reduce_logs_wraps():
    model = small_model()
    model.compile("sgd", "mse")
    reshaped = []
    keras_compat.reduce_logs_with_batch_axis(model, lambda value: (reshaped.append(1), value)[1])
    history = model.fit(*data(), epochs=1, verbose=0)
    assert reshaped, "fit no longer calls model.train_step: revisit keras_compat.reduce_logs_with_batch_axis"
    assert np.isfinite(history.history["loss"][0])


def test_trainable_tfsm_layer_names_its_variables_for_optimizer_slots(tmp_path):
    inputs = keras.Input((5,))
    keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs)).export(str(tmp_path / "saved"), verbose=False)
    layer = keras_compat.TrainableTFSMLayer(str(tmp_path / "saved"), call_endpoint="serve")
    assert layer.trainable_variables and all(":" not in v.name for v in layer.weights)
    model = keras.Model(inputs := keras.Input((5,)), layer(inputs))
    model.compile("adam", "mse")
    before = [np.array(v) for v in model.trainable_variables]
    model.fit(np.ones((4, 5), "float32"), np.zeros((4, 3), "float32"), verbose=0)
    assert any(not np.allclose(b, np.array(v)) for b, v in zip(before, model.trainable_variables))


class Recorder(keras_compat.BackupHooks):
    def __init__(self, backup_dir, resume=None, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.resume, self.events = resume, []

    def restore(self):
        self.events.append(("restore", self.epoch))
        if self.resume is not None:
            self.resume_at(self.resume)

    def backup(self):
        self.events.append(("backup", self.epoch, self.batch))


def test_backup_hooks_are_called_where_keras_restores_and_saves(tmp_path):
    model = small_model()
    model.compile("sgd", "mse")
    recorder = Recorder(str(tmp_path / "backup"))
    model.fit(*data(), epochs=2, batch_size=4, verbose=0, callbacks=[recorder])
    assert recorder.events == [("restore", 0), ("backup", 1, 0), ("backup", 2, 0)]
    steps = Recorder(str(tmp_path / "steps"), save_freq=1)
    model.fit(*data(), epochs=1, batch_size=4, verbose=0, callbacks=[steps])
    assert [e[0] for e in steps.events] == ["restore", "backup", "backup"]  # one per step

    resumed = Recorder(str(tmp_path / "resumed"), resume=1)
    history = model.fit(*data(), epochs=3, batch_size=4, verbose=0, callbacks=[resumed])
    assert history.epoch == [1, 2], "fit no longer starts at the epoch resume_at sets (Trainer._initial_epoch)"


def test_compiled_metrics_are_the_objects_given_to_compile():
    model = small_model()
    metric = keras.metrics.MeanAbsoluteError(name="mae")
    model.compile("sgd", "mse", metrics=[metric])
    assert keras_compat.compiled_metrics(model) == [metric]
    assert keras_compat.compiled_metrics(small_model()) == []


if __name__ == "__main__":
    testing.run(__file__)
