"""A tiny SDL model, vocabulary and export for the export, serving and tagging tests
(random weights: the tests check plumbing and parity, not tagging quality)."""

import numpy as np

IMAGE_SIZE = 32
EMBED_DIM = 16
NUM_ROWS = 3
TOP_K = 5
# Tag names with a space and a non-ASCII letter: they must survive every encoding.
TAGS = ["sky", "water", "person", "teddy bear", "dog", "beach", "café", "sunset", "grass", "car", "snow", "flower"]
UNSEEN = ["teddy bear", "sunset", "car"]


def tiny_model(seed=0):
    import keras

    from sdl_keras.models import build_sdl_model

    keras.utils.set_random_seed(seed)
    return build_sdl_model("small_cnn", num_rows=NUM_ROWS, embed_dim=EMBED_DIM, image_size=IMAGE_SIZE)


def tiny_vocabulary(seed=0):
    from sdl_keras.embeddings import TagVocabulary

    vectors = np.random.default_rng(seed).normal(size=(len(TAGS), EMBED_DIM))
    return TagVocabulary.from_tag_lists(TAGS, vectors, UNSEEN)


def export_tiny(base_path, seed=0, top_k=TOP_K, version=None):
    """Exports the tiny model under `base_path` (the next free version by default);
    returns (version dir, model, vocabulary)."""
    from sdl_keras.saved_model import export_model

    model, vocabulary = tiny_model(seed), tiny_vocabulary()
    return export_model(model, vocabulary, str(base_path), version=version, top_k=top_k), model, vocabulary
