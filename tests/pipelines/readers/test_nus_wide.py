"""NUS-WIDE in its official layout, on the real 1006-tag vocabulary: the 925/81 protocol,
labels from users' tags and ground truth, skipped missing and placeholder images, and
errors that name the file and line."""

import logging
import os

import numpy as np
import pytest

from pipelines.readers import nus_wide
from pipelines.readers import load_split
from pipelines.readers.image_files import check_image_files
from pipelines.text import read_lines
from tests import testing
from tests.datasets import PLACEHOLDER, jpeg, make_nus_wide


def real_vocabulary():
    tags = read_lines(testing.shared_path("reference", "nus_wide", "tags.txt"))
    unseen = read_lines(testing.shared_path("reference", "nus_wide", "unseen_tags.txt"))
    return tags, unseen


def test_zero_shot_vocabulary_is_the_official_925_81(tmp_path):
    tags, unseen = real_vocabulary()
    make_nus_wide(str(tmp_path), tags, unseen)
    vocabulary, concepts = nus_wide.zero_shot_vocabulary(str(tmp_path))
    assert vocabulary == tags and len(vocabulary) == 1006
    assert concepts == unseen and len(concepts) == 81
    assert len(set(vocabulary) - set(concepts)) == 925


def test_train_split_labels_skips_and_withholds_unseen(tmp_path):
    tags, unseen = real_vocabulary()
    root = str(tmp_path)
    matrix, _, flickr, names = make_nus_wide(root, tags, unseen)
    images, report = nus_wide.read_nus_wide(root, "train", tags)
    assert report.missing == [os.path.join(root, "Flickr", "zebra", "0010_1010.jpg")]
    assert len(report.placeholders) == 10 and "placeholder" in report.summary()
    assert images.ids == [n.replace("\\", "/") for n in names[11:14]]
    assert images.paths[0] == os.path.join(root, "Flickr", "sunset", "0011_1011.jpg")
    assert images.labels.shape == (3, 1006) and images.labels.dtype == np.float32
    keys = [n.replace("\\", "/") for n in names]
    seen_columns = [c for c, t in enumerate(tags) if t not in unseen]
    for k, image_id in enumerate(images.ids):
        expected = matrix[keys.index(image_id)]
        np.testing.assert_array_equal(
            images.labels[k, seen_columns], [expected[flickr.index(tags[c])] for c in seen_columns]
        )
    unseen_columns = [tags.index(t) for t in unseen]
    assert (images.labels[:, unseen_columns] == -1).all()


def test_test_split_takes_concepts_from_ground_truth(tmp_path):
    tags, unseen = real_vocabulary()
    root = str(tmp_path)
    matrix, truth, flickr, names = make_nus_wide(root, tags, unseen)
    images = load_split("nus_wide", root, "test", tags, unseen)
    assert len(images) == 4 and set(np.unique(images.labels)) <= {0.0, 1.0}
    for concept in unseen:  # includes the 75 concepts that are also Flickr tags
        np.testing.assert_array_equal(images.labels[:, tags.index(concept)], truth[concept, "Test"])


def test_placeholders_need_many_identical_copies(tmp_path):
    paths = []
    for k in range(12):
        path = tmp_path / f"{k}.jpg"
        path.write_bytes(PLACEHOLDER if k < 9 else jpeg(k))
        paths.append(str(path))
    (tmp_path / "empty.jpg").write_bytes(b"")
    paths.append(str(tmp_path / "empty.jpg"))
    assert check_image_files(paths, detect_placeholders=True).placeholders == []  # 9 copies < 10
    report = check_image_files(paths, detect_placeholders=True, min_copies=9)
    assert len(report.placeholders) == 9 and report.empty == [paths[-1]]
    assert report.keep.tolist() == [9, 10, 11]


def test_bad_files_are_errors_that_name_file_and_line(tmp_path):
    tags, unseen = real_vocabulary()
    root = str(tmp_path)
    make_nus_wide(root, tags, unseen)
    with pytest.raises(KeyError, match="not-a-tag"):
        nus_wide.read_nus_wide(root, "test", tags + ["not-a-tag"])

    matrix_path = os.path.join(root, "NUS_WID_Tags", "AllTags1k.txt")
    lines = open(matrix_path, encoding="utf-8").read().splitlines()
    listed = [nus_wide.image_key(line) for line in read_lines(os.path.join(root, "ImageList", "Imagelist.txt"))]
    row = listed.index("sunset/0014_1014.jpg")  # a test image: only rows in use are parsed
    good = lines[row]

    def write_matrix(rows):
        open(matrix_path, "w", encoding="utf-8").write("\n".join(rows) + "\n")

    write_matrix(lines[:row] + [good.replace("0", "2", 1)] + lines[row + 1:])
    with pytest.raises(ValueError, match=rf"AllTags1k.txt:{row + 1}: expected 0/1 values, found '2'"):
        nus_wide.read_nus_wide(root, "test", tags)
    write_matrix(lines[:row] + [good + "\t0"] + lines[row + 1:])
    with pytest.raises(ValueError, match=rf"AllTags1k.txt:{row + 1}: expected 1000 values, found 1001"):
        nus_wide.read_nus_wide(root, "test", tags)
    write_matrix(lines + ["0\t" * 1000])
    with pytest.raises(ValueError, match=r"AllTags1k.txt: 19 rows, but .*Imagelist.txt lists 18"):
        nus_wide.read_nus_wide(root, "test", tags)
    write_matrix(lines)

    truth_path = os.path.join(root, "Groundtruth", "TrainTestLabels", "Labels_sky_Test.txt")
    open(truth_path, "w").write("0\n1\n0\n")
    with pytest.raises(ValueError, match="Labels_sky_Test.txt: 3 labels for the 4 images"):
        nus_wide.read_nus_wide(root, "test", tags)
    open(truth_path, "w").write("0\n1\nyes\n0\n")
    with pytest.raises(ValueError, match="Labels_sky_Test.txt:3: expected 0/1 values, found 'yes'"):
        nus_wide.read_nus_wide(root, "test", tags)
    os.remove(truth_path)
    with pytest.raises(FileNotFoundError, match="Labels_sky_Test.txt not found"):
        nus_wide.read_nus_wide(root, "test", tags)

    with open(os.path.join(root, "ImageList", "TestImagelist.txt"), "a") as f:
        f.write("nowhere\\0000_1.jpg\r\n")
    with pytest.raises(ValueError, match=r"TestImagelist.txt:5: 'nowhere\\\\0000_1.jpg' is not in"):
        nus_wide.read_nus_wide(root, "test", tags)


def test_reader_logs_what_it_skipped(tmp_path, caplog):
    tags, unseen = real_vocabulary()
    make_nus_wide(str(tmp_path), tags, unseen)
    with caplog.at_level(logging.INFO):
        images = load_split("nus_wide", str(tmp_path), "train", tags)
    assert len(images) == 3
    assert "NUS-WIDE train: skipped 11 of 14 image files: 1 missing" in caplog.text
    assert "10 placeholder copies" in caplog.text


if __name__ == "__main__":
    testing.run(__file__)
