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
