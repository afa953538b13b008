"""COCO 2014 instances JSON with the real 48/17 split: which images each split keeps,
their labels, and the errors."""

import logging
import os

import numpy as np
import pytest

from pipelines.readers import coco
from pipelines.readers import load_split
from pipelines.text import read_lines
from tests import testing
from tests.datasets import make_coco


def real_split():
    path = testing.shared_path("reference", "coco", "split_48_17.json")
    classes = read_lines(testing.shared_path("reference", "coco", "classes.txt"))
    return path, classes


# (objects in the image, in train2014) with the split: person/dog/traffic light are
# seen/unseen/neither.
IMAGES = {
    1: ["person", "bicycle"],  # seen only -> train
    2: ["person", "dog"],  # seen + unseen -> test
    3: ["dog", "cat"],  # unseen only -> neither
    4: ["traffic light"],  # only a class outside the split -> neither
    5: ["traffic light", "car", "car"],  # seen + other -> train
    6: [],  # no objects -> neither
    7: ["toothbrush", "scissors", "person"],  # seen + unseen -> test
    8: ["zebra"],  # seen, but its file is missing -> skipped
}


def test_real_split_is_48_17_in_category_order():
    split, classes = real_split()
    seen, unseen = coco.read_zero_shot_split(split)
    assert (len(seen), len(unseen)) == (48, 17)
    tags, unseen_tags = coco.zero_shot_vocabulary(split, classes)
    assert len(tags) == 65 and unseen_tags == unseen
    assert tags == [c for c in classes if c in set(seen) | set(unseen)]


def test_train_keeps_seen_only_images_and_test_seen_plus_unseen(tmp_path):
    split, classes = real_split()
    tags, unseen = coco.zero_shot_vocabulary(split, classes)
    annotations = make_coco(str(tmp_path), classes, IMAGES, missing=(8,))
    train, report = coco.read_coco(annotations, "train", tags, unseen)
    assert train.ids == ["1", "5"]
    assert report.missing == [os.path.join(str(tmp_path), "train2014", "COCO_train2014_000000000008.jpg")]
    assert train.paths[0] == os.path.join(str(tmp_path), "train2014", "COCO_train2014_000000000001.jpg")
    expected = np.zeros((2, 65), np.float32)
    expected[0, [tags.index("person"), tags.index("bicycle")]] = 1
    expected[1, tags.index("car")] = 1  # "traffic light" is not a tag: ignored
    np.testing.assert_array_equal(train.labels, expected)

    test = load_split("coco", annotations, "test", tags, unseen)  # the registry reader
    assert test.ids == ["2", "7"]
    assert test.labels[0, tags.index("dog")] == 1 and test.labels[0, tags.index("person")] == 1
    assert test.labels[1].sum() == 3
    assert coco.read_coco(annotations, "test", tags, unseen, image_ids=[7])[0].ids == ["7"]


def test_tags_match_ignoring_case_and_underscores(tmp_path):
    _, classes = real_split()
    annotations = make_coco(str(tmp_path), classes, IMAGES, missing=(8,))
    images, _ = coco.read_coco(annotations, "train", ["Person", "tennis_racket", "car", "dog"], ["dog"])
    assert images.ids == ["1", "5", "7"] and images.labels[:, 0].tolist() == [1.0, 0.0, 1.0]


def test_errors_name_the_problem(tmp_path, caplog):
    split, classes = real_split()
    tags, unseen = coco.zero_shot_vocabulary(split, classes)
    annotations = make_coco(str(tmp_path), classes, IMAGES, missing=(8,))
    with pytest.raises(ValueError, match="pass unseen_tags"):
        load_split("coco", annotations, "train", tags)
    with pytest.raises(KeyError, match="'unicorn'"):
        coco.read_coco(annotations, "train", tags + ["unicorn"], unseen)
    with pytest.raises(KeyError, match="not among the tags"):
        coco.read_coco(annotations, "train", tags[:10], unseen)
    bad = tmp_path / "annotations" / "instances_val2014.json"
    bad.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(ValueError, match=r"instances_val2014.json:2: not valid JSON"):
        coco.read_coco(str(bad), "test", tags, unseen)
    bad.write_text('{"images": [], "annotations": []}')
    with pytest.raises(KeyError, match="no 'categories' key"):
        coco.read_coco(str(bad), "test", tags, unseen)
    split_file = tmp_path / "split.json"
    split_file.write_text('{"seen": ["dog", "cat"], "unseen": ["Dog"]}')
    with pytest.raises(ValueError, match="both seen and unseen: \\['dog'\\]"):
        coco.read_zero_shot_split(str(split_file))
    with caplog.at_level(logging.INFO):
        load_split("coco", annotations, "train", tags, unseen)
    assert "COCO train: skipped 1 of 3 image files: 1 missing" in caplog.text


if __name__ == "__main__":
    testing.run(__file__)
