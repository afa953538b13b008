"""The synthetic demo dataset: deterministic, compositional, with a clean seen/unseen split."""

import hashlib
import os

import numpy as np
from PIL import Image

from pipelines.readers.demo import COLOURS, SHAPES, DemoConfig, demo_tags, make_demo_dataset
from pipelines.readers.manifest import read_manifest
from sdl_keras.embeddings import TagVocabulary
from tests import testing

CONFIG = DemoConfig(num_train=60, num_test=40, image_size=32, embed_dim=16, seed=3)


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_deterministic_from_the_seed(tmp_path):
    make_demo_dataset(str(tmp_path / "a"), CONFIG)
    make_demo_dataset(str(tmp_path / "b"), CONFIG)
    make_demo_dataset(str(tmp_path / "c"), DemoConfig(**{**CONFIG.__dict__, "seed": 4}))
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_split_vectors_and_images(tmp_path):
    files = make_demo_dataset(str(tmp_path), CONFIG)
    tags, unseen = demo_tags()
    assert len(tags) == len(COLOURS) * len(SHAPES) and len(unseen) == len(COLOURS)
    # Every colour and every shape also appears in seen pairs, so unseen pairs can compose.
    seen = set(tags) - set(unseen)
    assert {t.split()[0] for t in seen} == set(COLOURS) and {t.split()[1] for t in seen} == set(SHAPES)
    vocabulary = TagVocabulary.from_files(files["tags.txt"], files["words.vec"], files["unseen_tags.txt"])
    with open(files["words.vec"]) as f:
        raw = {line.split()[0]: np.array(line.split()[1:], np.float32) for line in list(f)[1:]}
    composed = raw["red"] + raw["circle"]
    composed /= np.linalg.norm(composed)
    np.testing.assert_allclose(vocabulary.vectors[vocabulary.index("red circle")], composed, rtol=1e-5)
    train = read_manifest(files["train.jsonl"], vocabulary.tags)
    test = read_manifest(files["test.jsonl"], vocabulary.tags)
    unseen_columns = list(vocabulary.unseen)
    assert not (train.labels[:, unseen_columns] == 1).any()
    assert (test.labels[:, unseen_columns] == 1).any(axis=1).sum() >= CONFIG.num_test // 2
    assert set(np.unique(train.labels)) <= {0.0, 1.0} and (train.labels.sum(1) >= 1).all()
    image = Image.open(train.paths[0])
    assert image.size == (32, 32) and image.mode == "RGB"


def test_the_validation_split_shows_unseen_objects_labelled_for_seen_tags_only(tmp_path):
    files = make_demo_dataset(str(tmp_path / "v"), DemoConfig(**{**CONFIG.__dict__, "num_validation": 30}))
    vocabulary = TagVocabulary.from_files(files["tags.txt"], files["words.vec"], files["unseen_tags.txt"])
    validation = read_manifest(files["validation.jsonl"], vocabulary.tags)
    unseen, seen = list(vocabulary.unseen), list(vocabulary.seen)
    assert len(validation) == 30 and (validation.labels[:, unseen] == -1).all()
    assert set(np.unique(validation.labels[:, seen])) == {0.0, 1.0}
    # Drawn like the test split: half its images hold an unseen pair (unlabelled), so some
    # images have no positive seen tag at all; the training and test splits do not change.
    assert (validation.labels[:, seen] == 1).sum(axis=1).min() == 0
    make_demo_dataset(str(tmp_path / "w"), CONFIG)
    for split in ("train", "test"):
        assert digest(tmp_path / "v" / "images" / split) == digest(tmp_path / "w" / "images" / split)


if __name__ == "__main__":
    testing.run(__file__)
