"""Training with `model.fit`: the loop (`train`), the compiled model and optimizer, the
training data, callbacks, TensorBoard dashboards and tf.distribute strategies.

    from sdl_keras.config import TrainConfig
from sdl_keras.training.calibrate import calibrate_run
    from sdl_keras.training import train
    model, history, vocabulary = train(TrainConfig.from_flat(train_source=..., ...))
"""

from sdl_keras.config import TrainConfig
from sdl_keras.training.calibrate import calibrate_run
from sdl_keras.training.data import load_vocabulary, seen_labels
from sdl_keras.training.loop import build_callbacks, train
from sdl_keras.training.model import build_compiled_model, build_optimizer, learning_rate_schedule, resolve

__all__ = [
    "TrainConfig", "build_callbacks", "build_compiled_model", "build_optimizer", "calibrate_run",
    "learning_rate_schedule", "load_vocabulary", "resolve", "seen_labels", "train",
]
