"""The demo's 1,000 test images (pipelines.readers.demo) as retrieval data: their matrices
under a small random SDL model (M=4, d=64, as configs/demo.flags trains), their ids, and the
demo's vocabulary with its seen and unseen tags."""

import os

import numpy as np

NUM_IMAGES = 1000
IMAGE_SIZE = 48
NUM_ROWS = 4


def demo_matrices(folder, seed=0):
    """(ids, (1000, 4, 64) matrices, TagVocabulary) of the demo's test split, written to `folder`."""
    import keras
    from PIL import Image

    from pipelines.readers.demo import DemoConfig, make_demo_dataset
    from pipelines.readers.manifest import read_manifest
    from sdl_keras.embeddings import TagVocabulary
    from sdl_keras.models import build_sdl_model

    files = make_demo_dataset(folder, DemoConfig(num_train=0, num_test=NUM_IMAGES, image_size=IMAGE_SIZE))
    vocabulary = TagVocabulary.from_files(files["tags.txt"], files["words.vec"], files["unseen_tags.txt"])
    test = read_manifest(files["test.jsonl"], vocabulary.tags)
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in test.paths])
    keras.utils.set_random_seed(seed)
    model = build_sdl_model("small_cnn", num_rows=NUM_ROWS, embed_dim=vocabulary.dim, image_size=IMAGE_SIZE)
    matrices = np.asarray(model.predict(images, batch_size=250, verbose=0), np.float32)
    return [os.path.relpath(p, folder) for p in test.paths], matrices, vocabulary
