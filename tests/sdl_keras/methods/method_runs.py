"""A baseline trained for a few steps on a tiny demo dataset, evaluated and exported: the
flow a user runs (`python -m sdl_keras.train --method=...`, evaluate, export), in process."""

import os

import numpy as np
import tensorflow as tf

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from sdl_keras import inference, saved_model as export
from sdl_keras.config import TrainConfig
from sdl_keras.training import train
from sdl_keras.scoring import tag_scores


def train_evaluate_export(method, folder, **overrides):
    """Trains `method` on a tiny demo set under `folder`; returns (config, vocabulary, results,
    Keras model of the run, export folder)."""
    demo = DemoConfig(num_train=96, num_test=48, image_size=32, max_objects=2)
    files = make_demo_dataset(os.path.join(folder, "data"), demo)
    values = dict(
        method=method, train_source=files["train.jsonl"], test_source=files["test.jsonl"], tags=files["tags.txt"],
        word_vectors=files["words.vec"], unseen_tags=files["unseen_tags.txt"], backbone="small_cnn", image_size=32,
        batch_size=16, epochs=2, steps_per_epoch=3, learning_rate=3e-3, eval_every=0, jit_compile=False,
        output_dir=os.path.join(folder, "run"), verbose=0,
    )
    values.update(overrides)
    _, history, vocabulary = train(TrainConfig.from_flat(**values))
    assert np.isfinite(history.history["loss"]).all(), history.history
    results = inference.evaluate_run(values["output_dir"], progress=False)
    model, _, config = inference.load_run(values["output_dir"])
    exported = export.export_model(
        model, vocabulary, os.path.join(folder, "saved_models", method), aggregation=config.loss.aggregation
    )
    return config, vocabulary, results, model, exported


def check_export_serves_the_model(model, vocabulary, exported, image_size=32):
    """The export's `matrix` and `score_tags` signatures reproduce the Keras model's A and scores."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
    encoded = tf.stack([tf.io.encode_png(p) for p in pixels])
    signatures = tf.saved_model.load(exported).signatures
    matrix = signatures["matrix"](images=encoded)["matrix"].numpy()
    np.testing.assert_allclose(matrix, model.predict_on_batch(pixels.astype(np.float32)), atol=1e-5)
    scores = signatures["score_tags"](images=encoded, tag_vectors=tf.constant(vocabulary.vectors))["scores"].numpy()
    expected, _ = tag_scores(matrix, vocabulary.vectors)
    np.testing.assert_allclose(scores, np.asarray(expected), atol=1e-5)
    return matrix
