"""Tag vectors from every supported format, multi-word tags, missing words, and the vocabulary."""

import pickle

import numpy as np
import pytest

from sdl_keras.embeddings import TagVocabulary, load_official_tag_list, load_tag_vectors, read_lines
from tests import testing

WORDS = {"hot": [1.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0], "teddy": [0.0, 0.0, 2.0], "bear": [2.0, 0.0, 0.0],
         "cat": [0.0, 3.0, 4.0]}


def expected(*words):
    v = np.mean([WORDS[w] for w in words], axis=0)
    return v / np.linalg.norm(v)


def write_text(path, header):
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write(f"{len(WORDS)} 3\n")
        for word, values in WORDS.items():
            f.write(word + " " + " ".join(map(str, values)) + "\n")


def write_word2vec_binary(path):
    with open(path, "wb") as f:
        f.write(f"{len(WORDS)} 3\n".encode())
        for word, values in WORDS.items():
            f.write(word.encode() + b" " + np.asarray(values, np.float32).tobytes() + b"\n")


@pytest.mark.parametrize("suffix", ["vec", "txt", "bin"])
def test_word_vector_files_average_multi_word_tags(tmp_path, suffix):
    path = str(tmp_path / f"words.{suffix}")
    write_word2vec_binary(path) if suffix == "bin" else write_text(path, header=suffix == "vec")
    tags, vectors = load_tag_vectors(path, ["cat", "hot dog", "teddy_bear", "Hot-Dog"])
    assert tags == ["cat", "hot dog", "teddy_bear", "Hot-Dog"]
    np.testing.assert_allclose(vectors, [expected("cat"), expected("hot", "dog"), expected("teddy", "bear"),
                                         expected("hot", "dog")], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


def test_missing_words_list_every_tag_or_are_skipped(tmp_path, caplog):
    path = str(tmp_path / "words.vec")
    write_text(path, header=True)
    with pytest.raises(KeyError) as error:
        load_tag_vectors(path, ["cat", "zebra", "hot potato"])
    assert "'zebra'" in str(error.value) and "'hot potato' (missing: potato)" in str(error.value)
    tags, vectors = load_tag_vectors(path, ["cat", "zebra", "hot potato"], on_missing="skip")
    assert tags == ["cat"] and vectors.shape == (1, 3)
    assert "zebra" in caplog.text


def test_arrays_and_pickles(tmp_path):
    rows = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
    np.save(tmp_path / "v.npy", rows)
    assert load_tag_vectors(str(tmp_path / "v.npy"), ["a", "b"])[1][0] == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match="2 vectors for 3 tags"):
        load_tag_vectors(str(tmp_path / "v.npy"), ["a", "b", "c"])
    np.savez(tmp_path / "v.npz", tags=np.array(["a", "b"]), vectors=rows)
    tags, vectors = load_tag_vectors(str(tmp_path / "v.npz"), ["b", "a"])
    assert tags == ["b", "a"] and vectors[1] == pytest.approx([0.6, 0.8])
    with open(tmp_path / "w.pickle", "wb") as f:
        pickle.dump(rows.T, f)  # the official layout: d x C
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_tag_vectors(str(tmp_path / "w.pickle"), ["a", "b"])
    assert load_tag_vectors(str(tmp_path / "w.pickle"), ["a", "b"], allow_pickle=True)[1][1] == pytest.approx([0, 1])
    with open(tmp_path / "w.pickle", "wb") as f:
        pickle.dump({"vectors": rows.T[None]}, f)  # COCO's: a dict holding 1 x d x C
    assert load_tag_vectors(str(tmp_path / "w.pickle"), ["a", "b"], allow_pickle=True)[1][0] == pytest.approx([.6, .8])
    with pytest.raises(FileNotFoundError, match="nothere.vec"):
        load_tag_vectors(str(tmp_path / "nothere.vec"), ["a"])


def test_reference_vectors_agree_with_the_official_pickles():
    nus = testing.shared_path("reference", "nus_wide")
    tags = read_lines(f"{nus}/tags.txt")
    _, vectors = load_tag_vectors(f"{nus}/word_vectors.npy", tags)
    official_tags = load_official_tag_list(f"{nus}/official/classes.pickle")
    _, official = load_tag_vectors(f"{nus}/official/wordvec_array.pickle", official_tags, allow_pickle=True)
    assert official_tags == tags and vectors.shape == (1006, 300)
    np.testing.assert_allclose(vectors, official, atol=1e-6)
    vocabulary = TagVocabulary.from_files(f"{nus}/tags.txt", f"{nus}/word_vectors.npy", f"{nus}/unseen_tags.txt")
    assert len(vocabulary.unseen) == 81 and len(vocabulary.seen) == 925
    coco = testing.shared_path("reference", "coco")
    classes = read_lines(f"{coco}/classes.txt")
    _, coco_official = load_tag_vectors(f"{coco}/official/wordvec_array.pickle", classes, allow_pickle=True)
    np.testing.assert_allclose(load_tag_vectors(f"{coco}/word_vectors.npy", classes)[1], coco_official, atol=1e-4)


def test_vocabulary_round_trip_and_errors(tmp_path):
    vocabulary = TagVocabulary(["a", "b", "c"], np.eye(3, 4), unseen=[2])
    assert vocabulary.seen == (0, 1) and vocabulary.unseen_tags == ["c"] and vocabulary.dim == 4
    vocabulary.save(tmp_path / "vocab.npz")
    loaded = TagVocabulary.load(str(tmp_path / "vocab.npz"))
    assert loaded.tags == vocabulary.tags and loaded.unseen == (2,)
    np.testing.assert_array_equal(loaded.vectors, vocabulary.vectors)
    with pytest.raises(ValueError, match="Duplicate tags"):
        TagVocabulary(["a", "a"], np.eye(2))
    with pytest.raises(KeyError, match="'zebra'"):
        TagVocabulary.from_tag_lists(["a"], np.eye(1), ["zebra"])
    with pytest.raises(KeyError, match="not in the vocabulary"):
        vocabulary.index("zebra")


def vec_file(path, lines, header=""):
    """A .vec file of `lines` (str or bytes) of 3 values under a header ("": the right one, None: none)."""
    data = b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)
    header = f"{len(lines)} 3" if header == "" else header
    path.write_bytes((f"{header}\n".encode() if header else b"") + data)
    return str(path)


GOOD = ["hot 1 0 0", "dog 0 1 0", "cat 0 3 4"]


@pytest.mark.parametrize("value, found", [("nan", "'nan', value 2 of 3"), ("inf", "'inf', value 2 of 3"),
                                          ("1e50", "'1e50', value 2 of 3")])
def test_non_finite_values_are_an_error_naming_the_file_line_and_word(tmp_path, value, found):
    path = vec_file(tmp_path / "words.vec", ["hot 1 0 0", f"red 0.5 {value} 1", *GOOD[1:]])
    with pytest.raises(ValueError) as error:
        load_tag_vectors(path, ["red", "cat"])
    assert str(error.value) == f"{path}:3: word 'red' has non-finite values ({found})."
    # The same in GloVe text and word2vec binary files.
    glove = vec_file(tmp_path / "words.txt", ["hot 1 0 0", f"red 0.5 {value} 1"], header=None)
    with pytest.raises(ValueError, match=r"words.txt:2: word 'red' has non-finite values"):
        load_tag_vectors(glove, ["red"])
    binary = tmp_path / "words.bin"
    with np.errstate(over="ignore"):
        red = np.float32([0.5, float(value), 1])
    binary.write_bytes(b"2 3\nhot " + np.float32([1, 0, 0]).tobytes() + b"\nred " + red.tobytes() + b"\n")
    with pytest.raises(ValueError, match=r"words.bin: word 2 \(byte offset 21\): word 'red' has non-finite values"):
        load_tag_vectors(str(binary), ["red"])


def test_unparsable_values_and_non_utf8_bytes_name_the_file_line_and_what_was_found(tmp_path):
    path = vec_file(tmp_path / "words.vec", ["hot 1 0 0", "red 0.5 abc 1", *GOOD[1:]])
    with pytest.raises(ValueError) as error:
        load_tag_vectors(path, ["red"])
    assert str(error.value) == f"{path}:3: word 'red' has a value that is not a number: 'abc'."
    # A byte that is not UTF-8 in a word: the word cannot be read, and the tag left without a
    # vector says where that line is and what it holds.
    path = vec_file(tmp_path / "bytes.vec", ["hot 1 0 0", b"bl\xffue 0 0 1", *GOOD[1:]])
    with pytest.raises(KeyError) as error:
        load_tag_vectors(path, ["blue", "cat"])
    assert str(error.value.args[0]) == (
        f"1 tag(s) have no vector in {path}: 'blue' (missing: blue). 1 word(s) of {path} could not be read, as "
        f"their bytes are not UTF-8 text (e.g. {path}:3: not UTF-8 text (byte 0xff, "
        r"in b'bl\xffue 0 0 1'))")
    # In the values of a wanted word it is an error of that line.
    path = vec_file(tmp_path / "values.vec", ["hot 1 0 0", b"blue 0 0\xff 1"])
    with pytest.raises(ValueError, match=r"values.vec:3: not UTF-8 text \(byte 0xff, in b'blue 0 0\\xff "
                                         r"1'\): the values of word 'blue'; save the file as UTF-8."):
        load_tag_vectors(path, ["blue"])
    # One not needed costs a warning only.
    tags, _ = load_tag_vectors(str(tmp_path / "bytes.vec"), ["cat"])
    assert tags == ["cat"]


def test_wrong_header_counts_and_repeated_words_warn_within_the_part_read(tmp_path, caplog):
    path = vec_file(tmp_path / "words.vec", GOOD, header="5 3")
    assert load_tag_vectors(path, ["cat", "zebra"], on_missing="skip")[0] == ["cat"]  # read to the end
    assert f"{path}: the header says 5 words, but the file holds 3." in caplog.text
    caplog.clear()
    path = vec_file(tmp_path / "more.vec", [*GOOD, "red 1 1 1"], header="2 3")
    load_tag_vectors(path, ["red"])
    assert f"{path}:4: the header says 2 words, but the file holds more" in caplog.text
    caplog.clear()
    # Read until every word is found: a header too large is then not noticed.
    load_tag_vectors(vec_file(tmp_path / "early.vec", GOOD, header="9 3"), ["hot"])
    assert "header" not in caplog.text
    # A word listed twice: the first vector is used, with a warning naming both lines.
    path = vec_file(tmp_path / "twice.vec", ["cat 0 3 4", "hot 1 0 0", "cat 9 9 9"], header="3 3")
    _, vectors = load_tag_vectors(path, ["cat", "dog"], on_missing="skip")
    np.testing.assert_allclose(vectors, [expected("cat")], rtol=1e-6)
    assert f"{path}: 1 word(s) listed more than once; the first vector of each is used: 'cat' (line 2, line 4)" \
        in caplog.text
    # word2vec binary: the same checks.
    caplog.clear()
    binary = tmp_path / "words.bin"
    binary.write_bytes(b"3 3\ncat " + np.float32([0, 3, 4]).tobytes() + b"\ncat " + np.float32([9, 9, 9]).tobytes())
    _, vectors = load_tag_vectors(str(binary), ["cat", "dog"], on_missing="skip")
    np.testing.assert_allclose(vectors, [expected("cat")], rtol=1e-6)
    assert "the header says 3 words, but the file holds 2" in caplog.text
    assert "'cat' (word 1, word 2)" in caplog.text


def test_arrays_and_vocabularies_refuse_non_finite_vectors(tmp_path):
    rows = np.array([[3.0, 4.0], [np.nan, 2.0]], np.float32)
    np.save(tmp_path / "v.npy", rows)
    with pytest.raises(ValueError, match=r"v.npy: 1 vector\(s\) have non-finite values: row\(s\) 1 \('b'\)"):
        load_tag_vectors(str(tmp_path / "v.npy"), ["a", "b"])
    np.savez(tmp_path / "v.npz", tags=np.array(["a", "b"]), vectors=rows)
    with pytest.raises(ValueError, match=r"v.npz: .* row\(s\) 1 \('b'\)"):
        load_tag_vectors(str(tmp_path / "v.npz"), ["a"])
    with pytest.raises(ValueError, match=r"Non-finite vector values for 1 tag\(s\): \['b'\]"):
        TagVocabulary(["a", "b"], rows)
    np.savez(tmp_path / "vocabulary.npz", tags=np.array(["a", "b"]), vectors=rows, unseen=np.array([1]))
    with pytest.raises(ValueError, match=r"vocabulary.npz: Non-finite vector values for 1 tag\(s\): \['b'\]"):
        TagVocabulary.load(str(tmp_path / "vocabulary.npz"))


def test_tag_files_name_repeated_and_unknown_tags_with_their_lines(tmp_path):
    path = vec_file(tmp_path / "words.vec", GOOD)
    (tmp_path / "tags.txt").write_text("cat\nhot dog\ncat\n")
    with pytest.raises(ValueError, match=r"tags.txt: 1 tag\(s\) listed more than once: 'cat' \(lines 1, 3\)"):
        TagVocabulary.from_files(str(tmp_path / "tags.txt"), path)
    (tmp_path / "tags.txt").write_text("cat\nhot dog\n")
    (tmp_path / "unseen.txt").write_text("hot dog\nzebra\n")
    with pytest.raises(KeyError, match=r"unseen.txt: 1 unseen tag\(s\) not in .*tags.txt: 'zebra' \(line 2\)"):
        TagVocabulary.from_files(str(tmp_path / "tags.txt"), path, str(tmp_path / "unseen.txt"))
    (tmp_path / "unseen.txt").write_bytes(b"hot dog\nz\xe9bra\n")
    with pytest.raises(ValueError, match=r"unseen.txt:2: not UTF-8 text \(byte 0xe9 at offset 9, in b'z\\xe9bra'\)"):
        TagVocabulary.from_files(str(tmp_path / "tags.txt"), path, str(tmp_path / "unseen.txt"))

def test_official_coco_vectors_as_npy_rows_picked_by_name(tmp_path):
    """configs/coco.flags: the split's 65 tags take their rows of the official 80-row vectors
    (row i = classes.txt line i) by name; the same vectors as the official float16 pickle."""
    import json

    classes_path = testing.shared_path("reference", "coco", "classes.txt")
    vectors_path = testing.shared_path("reference", "coco", "word_vectors.npy")
    classes = read_lines(classes_path)
    with open(testing.shared_path("reference", "coco", "split_48_17.json")) as f:
        split = json.load(f)
    tags = [c for c in classes if c in split["seen"] + split["unseen"]]  # category order
    (tmp_path / "tags.txt").write_text("\n".join(tags) + "\n")
    (tmp_path / "unseen.txt").write_text("\n".join(split["unseen"]) + "\n")
    vocabulary = TagVocabulary.from_files(tmp_path / "tags.txt", vectors_path, tmp_path / "unseen.txt",
                                          vector_tags=classes_path)
    assert len(vocabulary) == 65 and len(vocabulary.unseen) == 17
    rows = np.load(vectors_path)[[classes.index(t) for t in tags]]
    np.testing.assert_allclose(vocabulary.vectors, rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-6)
    official = load_tag_vectors(testing.shared_path("reference", "coco", "official", "wordvec_array.pickle"),
                                classes, allow_pickle=True)[1]
    np.testing.assert_allclose(vocabulary.vectors, official[[classes.index(t) for t in tags]], atol=1e-3)
    with pytest.raises(KeyError, match="1 tag\\(s\\) have no vector"):
        load_tag_vectors(vectors_path, ["person", "unicorn"], row_tags=classes)
    with pytest.raises(ValueError, match="80 vectors for the 3 tags"):
        load_tag_vectors(vectors_path, ["person"], row_tags=classes[:3])


if __name__ == "__main__":
    testing.run(__file__)
