"""Open Images V4 human-verified labels with the real 7186/400 class lists: confidence 1/0
and unknown -1, sparse rows, the pickle opt-in, and the errors."""

import logging
import os

import numpy as np
import pytest

from pipelines.readers import open_images
from pipelines.readers import load_split
from tests import testing
from tests.datasets import HEADER, write_labels

def classes_dir():
    return os.path.dirname(testing.shared_path("reference", "open_images", "classes-trainable.txt"))


def test_real_class_lists_give_7186_seen_and_400_unseen():
    tags, unseen = open_images.zero_shot_vocabulary(classes_dir())
    assert len(tags) == 7586 and len(unseen) == 400 and len(set(tags)) == 7586
    assert tags[7186:] == unseen
    # The pickle route resolves the same 400 MIDs from top_400_unseen.csv (BOM, CRLF).
    assert open_images.zero_shot_vocabulary(classes_dir(), allow_pickle=True) == (tags, unseen)
    names = open_images.class_names(classes_dir(), tags[:3])
    assert len(names) == 3 and all(names)


def test_unseen_pickle_needs_an_explicit_opt_in(tmp_path):
    for name in ("classes-trainable.txt", "top_400_unseen.csv", "unseen_labels.pkl"):
        os.symlink(os.path.join(classes_dir(), name), tmp_path / name)  # read in place, no copy
    with pytest.raises(FileNotFoundError, match="allow_pickle=True"):
        open_images.zero_shot_vocabulary(str(tmp_path))
    tags, unseen = open_images.zero_shot_vocabulary(str(tmp_path), allow_pickle=True)
    assert len(unseen) == 400


def test_confidence_gives_positive_negative_and_unknown(tmp_path):
    tags, unseen = open_images.zero_shot_vocabulary(classes_dir())
    vocab = tags[:3] + unseen[:2]  # 3 seen and 2 unseen MIDs
    rows = [
        ("img_b", vocab[0], 1),
        ("img_b", vocab[1], 0),
        ("img_b", "/m/not_a_tag", 1),  # a class outside the tags: ignored
        ("img_a", vocab[2], 0),
        ("img_a", vocab[2], 1),  # verified twice, both ways: the positive wins
        ("img_a", vocab[3], 1),
        ("img_c", "/m/not_a_tag", 1),  # no label among the tags: left out
    ]
    path = write_labels(str(tmp_path), "validation", rows)
    images, report = open_images.read_open_images(path, "test", vocab)
    assert images.ids == ["img_b", "img_a"] and report.skipped == 0
    assert images.paths[1] == os.path.join(str(tmp_path), "validation", "img_a.jpg")
    expected = [[1, 0, -1, -1, -1], [-1, -1, 1, 1, -1]]
    np.testing.assert_array_equal(images.labels.dense(), expected)
    np.testing.assert_array_equal(images.labels[1], expected[1])
    assert images.labels.shape == (2, 5)

    # Training withholds the unseen columns; the registry reader returns dense labels.
    train_path = write_labels(str(tmp_path), "train", rows)
    train = load_split("open_images", train_path, "train", vocab, unseen[:2])
    np.testing.assert_array_equal(train.labels, [[1, 0, -1, -1, -1], [-1, -1, 1, -1, -1]])
    assert isinstance(train.labels, np.ndarray) and train.labels.dtype == np.float32


def test_missing_images_are_skipped_and_rows_stay_aligned(tmp_path, caplog):
    vocab = ["/m/a", "/m/b", "/m/c"]
    rows = [("i0", "/m/a", 1), ("i1", "/m/b", 1), ("i1", "/m/c", 0), ("i2", "/m/c", 1)]
    path = write_labels(str(tmp_path), "test", rows)
    os.remove(tmp_path / "test" / "i1.jpg")
    with caplog.at_level(logging.INFO):
        images = load_split("open_images", path, "test", vocab)
    assert images.ids == ["i0", "i2"]
    np.testing.assert_array_equal(images.labels, [[1, -1, -1], [-1, -1, 1]])
    assert "Open Images test: skipped 1 of 3 image files: 1 missing" in caplog.text


def test_bad_input_names_file_and_line(tmp_path):
    path = write_labels(str(tmp_path), "test", [("i0", "/m/a", 1), ("i0", "/m/b", "0.7")])
    with pytest.raises(ValueError, match=r"test-annotations-human-imagelabels.csv:3: Confidence must be 0 or 1"):
        open_images.read_labels(path, ["/m/a", "/m/b"])
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,LabelName\ni0,/m/a\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: the header lacks column\(s\) \['Confidence'\]"):
        open_images.read_labels(str(bad), ["/m/a"])
    bad.write_text(HEADER + "i0,verification\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: expected 4 fields, got 2"):
        open_images.read_labels(str(bad), ["/m/a"])
    with pytest.raises(KeyError, match="Open Images tags are class MIDs"):
        open_images.read_open_images(path, "test", ["Dog"])
    (tmp_path / "top_400_unseen.csv").write_text("\ufeff3\r\nx\r\n")
    (tmp_path / "classes-trainable.txt").write_text("/m/a\n")
    np.asarray(["/m/x", "/m/y", "/m/z", "/m/w"], dtype=object).dump(str(tmp_path / "unseen_labels.pkl"))
    with pytest.raises(ValueError, match=r"top_400_unseen.csv:2: 'x' is not an integer"):
        open_images.zero_shot_vocabulary(str(tmp_path), allow_pickle=True)
    (tmp_path / "top_400_unseen.csv").write_text("3\r\n9\r\n")
    with pytest.raises(IndexError, match=r"top_400_unseen.csv:2: index 9 is outside"):
        open_images.zero_shot_vocabulary(str(tmp_path), allow_pickle=True)


def test_sparse_rows_select_and_refuse_huge_dense_matrices():
    rows = open_images.SparseRows([0, 2, 2, 3], [0, 4, 1], [1, 0, 1], num_classes=5)
    np.testing.assert_array_equal(rows.select(np.array([0, 2])).dense(), [[1, -1, -1, -1, 0], [-1, 1, -1, -1, -1]])
    with pytest.raises(MemoryError, match="convert this split to TFRecords"):
        rows.dense(max_bytes=32)


if __name__ == "__main__":
    testing.run(__file__)
