"""Open Images as a user runs it, one process per command: the human-verified labels CSVs
and class lists of a fixture converted to TFRecords (`pipelines.to_tfrecord`, both splits,
as configs/open_images.flags' comments say), an .npz of the class names' vectors, then
configs/open_images.flags through train, evaluate, export, serving, tag and search (the
test records indexed)."""

import os

import numpy as np

from sdl_keras.embeddings import load_tag_vectors, read_lines, tag_words
from tests import testing
from tests.datasets import open_images_rows, write_labels, write_open_images_classes, write_word_vectors
from tests.flows import flow

SEEN = ("Tree", "Car", "Dog", "Building", "Flower", "Sky", "Person", "Water", "Boat", "Bird", "Food", "Chair", "Book",
        "Road", "Grass", "Cloud")
UNSEEN = ("Zebra", "Violin", "Lighthouse", "Hot air balloon", "Cupcake")
SEEN_MIDS = tuple(f"/m/0{k:05x}" for k in range(100, 100 + len(SEEN)))
UNSEEN_MIDS = tuple(f"/m/0{k:05x}" for k in range(900, 900 + len(UNSEEN)))
SIZE = (40, 30)


def write_open_images(user):
    """The class lists, 32 train images verified on seen classes, 16 test images verified
    on all (each with an unseen class present); returns the test image ids."""
    write_open_images_classes(user.path("open_images", "classes"), SEEN_MIDS, UNSEEN_MIDS, SEEN + UNSEEN)
    train_ids = [f"{k:016x}" for k in range(0x1000, 0x1000 + 32)]
    test_ids = [f"{k:016x}" for k in range(0x9000, 0x9000 + 16)]
    write_labels(user.path("open_images"), "train", open_images_rows(train_ids, SEEN_MIDS, seed=1), image_size=SIZE)
    test_rows = open_images_rows(test_ids, SEEN_MIDS + UNSEEN_MIDS, seed=2)
    test_rows += [(image_id, UNSEEN_MIDS[k % len(UNSEEN_MIDS)], 1) for k, image_id in enumerate(test_ids)]
    write_labels(user.path("open_images"), "test", test_rows, image_size=SIZE)
    return test_ids


def write_name_vectors(user, records):
    """word_vectors.npz: the converter's tags (MIDs) with the vectors of their names
    (tag_names.txt) looked up in a FastText file, as a user builds it."""
    names = read_lines(os.path.join(records, "tag_names.txt"))
    vec = write_word_vectors(user.path("open_images", "names.vec"), [w for n in names for w in tag_words(n)], dim=32)
    _, vectors = load_tag_vectors(vec, names)
    np.savez(user.path("open_images", "word_vectors.npz"), tags=read_lines(os.path.join(records, "tags.txt")),
             vectors=vectors)


def test_open_images_flags(tmp_path):
    user = flow.Flow(tmp_path)
    test_ids = write_open_images(user)
    for split, count in (("train", 32), ("test", 16)):
        done = user.run(
            "pipelines.to_tfrecord", "--flagfile=configs/to_tfrecord.flags", "--dataset=open_images",
            "--classes_dir=open_images/classes", f"--source=open_images/{split}-annotations-human-imagelabels.csv",
            f"--split={split}", "--output_dir=open_images/records", "--max_side=512",
        )
        assert f"Wrote {count} examples in 1 shards" in done.stdout, done.stdout
        assert "21 tags (5 unseen) listed" in done.stdout, done.stdout
    assert read_lines(user.path("open_images", "records", "tag_names.txt")) == list(SEEN + UNSEEN)
    write_name_vectors(user, user.path("open_images", "records"))
    data = (
        "--train_source=open_images/records", "--test_source=open_images/records",
        "--tags=open_images/records/tags.txt", "--unseen_tags=open_images/records/unseen_tags.txt",
        "--word_vectors=open_images/word_vectors.npz",
    )
    images = [os.path.join("open_images", "test", f"{image_id}.jpg") for image_id in test_ids[:3]]
    run = flow.user_path(user, "configs/open_images.flags", "open_images", data, images,
                         ["--tfrecords=open_images/records/test-*.tfrecord"], test_ids, UNSEEN_MIDS[3])
    config = run.config()
    assert config.data.dataset == "tfrecord" and not config.data.allow_pickle and config.loss.unknown_as_negative
    assert config.model.augment and config.model.augmentation == "official" and config.model.cutout_rate is None
    assert config.model.num_rows == 7 and config.loss.reg_weight == 0.3
    assert config.optimizer.learning_rate == 1e-4 and config.optimizer.weight_decay == 3e-4
    assert config.evaluation.ks == (10, 20)
    vocabulary = run.vocabulary()
    assert vocabulary.tags == SEEN_MIDS + UNSEEN_MIDS and vocabulary.unseen_tags == list(UNSEEN_MIDS)


if __name__ == "__main__":
    testing.run(__file__)
