"""The generic manifest format: JSONL and CSV, partial annotation, unknown tag names, and
bad files: text that is not UTF-8 and repeated image ids are errors naming file and lines."""

import json

import numpy as np
import pytest

from pipelines.readers.manifest import read_manifest, write_manifest
from tests import testing

TAGS = ["red circle", "blue square", "green ring"]


def test_jsonl_and_csv_give_the_same_labels(tmp_path):
    records = [("a.png", ["red circle"]), ("sub/b.png", ["blue square", "green ring"]), ("c.png", [])]
    write_manifest(str(tmp_path / "m.jsonl"), records)
    write_manifest(str(tmp_path / "m.csv"), records)
    jsonl = read_manifest(str(tmp_path / "m.jsonl"), TAGS)
    csv = read_manifest(str(tmp_path / "m.csv"), TAGS)
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(jsonl.labels, expected)
    np.testing.assert_array_equal(csv.labels, expected)
    assert jsonl.paths[1] == str(tmp_path / "sub" / "b.png") and jsonl.ids == ["a.png", "sub/b.png", "c.png"]


def test_partial_annotation_marks_the_rest_unknown(tmp_path):
    with open(tmp_path / "m.jsonl", "w") as f:
        f.write(json.dumps({"image": "/abs/x.jpg", "id": "x", "tags": ["red circle"], "negative_tags": ["green ring"]}))
    images = read_manifest(str(tmp_path / "m.jsonl"), TAGS)
    np.testing.assert_array_equal(images.labels, [[1, -1, 0]])
    assert images.paths == ["/abs/x.jpg"] and images.ids == ["x"]


def test_unknown_tags_are_reported_with_their_lines(tmp_path, caplog):
    write_manifest(str(tmp_path / "m.jsonl"), [("a.png", ["red circle", "pink star"]), ("b.png", ["pink star"]),
                                               ("c.png", ["tiny dot"])])
    with pytest.raises(KeyError) as error:
        read_manifest(str(tmp_path / "m.jsonl"), TAGS)
    assert "2 tag name(s)" in str(error.value) and "'pink star' (lines 1, 2)" in str(error.value)
    images = read_manifest(str(tmp_path / "m.jsonl"), TAGS, on_unknown="skip")
    assert len(images) == 3 and "tiny dot" in caplog.text


def test_malformed_manifests_name_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "tags": []}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_manifest(str(tmp_path / "bad.jsonl"), TAGS)
    (tmp_path / "bad.csv").write_text("path,labels\na.png,x\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['image', 'tags'\]"):
        read_manifest(str(tmp_path / "bad.csv"), TAGS)
    (tmp_path / "nokey.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(ValueError, match="nokey.jsonl:1: a record needs 'image' and 'tags'"):
        read_manifest(str(tmp_path / "nokey.jsonl"), TAGS)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_manifest(str(tmp_path / "missing.jsonl"), TAGS)


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    good = json.dumps({"image": "a.png", "tags": ["red circle"]}).encode() + b"\n"
    (tmp_path / "m.jsonl").write_bytes(good + b'{"image": "b.png", "tags": ["bl\xe9 square"]}\n')
    with pytest.raises(ValueError) as error:
        read_manifest(str(tmp_path / "m.jsonl"), TAGS)
    assert str(error.value) == (f"{tmp_path}/m.jsonl:2: not UTF-8 text (byte 0xe9 at offset 74, in "
                                r"""b'": "b.png", "tags": ["bl\xe9 square"]}'); save the file as UTF-8.""")
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfimage,tags\na.png,red circle\r\nb.png,gr\xfcn ring\r\n")
    with pytest.raises(ValueError, match=r"m.csv:3: not UTF-8 text \(byte 0xfc at offset 40, in b.b.png,gr"):
        read_manifest(str(tmp_path / "m.csv"), TAGS)


def test_an_image_id_on_two_lines_is_an_error_naming_the_id_and_both_lines(tmp_path):
    records = [("a.png", ["red circle"]), ("b.png", []), {"image": "c.png", "id": "a.png", "tags": []},
               ("b.png", ["green ring"]), ("b.png", [])]
    write_manifest(str(tmp_path / "m.jsonl"), records)
    with pytest.raises(ValueError) as error:
        read_manifest(str(tmp_path / "m.jsonl"), TAGS)
    assert str(error.value) == (f"{tmp_path}/m.jsonl: 2 image id(s) on more than one line: 'a.png' (lines 1, 3); "
                                "'b.png' (lines 2, 4, 5). Ids must be unique: give each record its own \"id\".")
    write_manifest(str(tmp_path / "m.csv"), [("a.png", ["red circle"]), ("a.png", [])])
    with pytest.raises(ValueError, match=r"m.csv: 1 image id\(s\) on more than one line: 'a.png' \(lines 2, 3\)"):
        read_manifest(str(tmp_path / "m.csv"), TAGS)


if __name__ == "__main__":
    testing.run(__file__)
