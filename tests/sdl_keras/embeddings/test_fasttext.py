"""FastText .bin models in load_tag_vectors: any word gets a vector from its n-grams, known
words get the .vec file's, and word2vec's .bin stays what it was."""

import numpy as np
import pytest

from sdl_keras.embeddings import TagVocabulary, load_tag_vectors
from sdl_keras.embeddings.fasttext import is_fasttext_binary
from tests import testing
from sdl_keras.embeddings import demo_models
from tests.datasets import write_word2vec_binary


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return demo_models.train_fasttext(str(tmp_path_factory.mktemp("fasttext")))


def test_in_vocabulary_words_equal_the_vec_file_of_the_same_model(model):
    binary, text = model
    from_bin = load_tag_vectors(binary, demo_models.WORDS + ["red circle"])
    from_vec = load_tag_vectors(text, demo_models.WORDS + ["red circle"])
    np.testing.assert_allclose(from_bin.vectors, from_vec.vectors, atol=1e-6)
    assert from_bin.built_from_subwords == () and from_vec.built_from_subwords == ()


def test_out_of_vocabulary_words_and_phrases_get_vectors_near_their_stems(model):
    binary, text = model
    queries = ["circles", "squares", "triangles", "purple rings", "crosses"]
    with pytest.raises(KeyError, match="circles"):
        load_tag_vectors(text, queries)  # the .vec file has no vector for them
    result = load_tag_vectors(binary, demo_models.WORDS + queries)
    tags, vectors = result  # still the (tags, vectors) pair
    assert tags == demo_models.WORDS + queries
    assert result.built_from_subwords == tuple(queries)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    words = vectors[:len(demo_models.WORDS)]
    nearest = {q: demo_models.WORDS[int(np.argmax(words @ v))] for q, v in zip(queries, vectors[len(words):])}
    # A plural shares most of its character n-grams with its singular.
    assert nearest["circles"] == "circle" and nearest["squares"] == "square" and nearest["triangles"] == "triangle"
    assert nearest["crosses"] == "cross"
    # A phrase averages its words' vectors (FastText's getWordVector), as with every vector file.
    from gensim.models.fasttext import load_facebook_vectors

    keyed = load_facebook_vectors(binary)
    expected = (keyed["purple"] + keyed["rings"]) / np.linalg.norm(keyed["purple"] + keyed["rings"])
    np.testing.assert_allclose(vectors[tags.index("purple rings")], expected, atol=1e-5)


def test_the_magic_number_tells_fasttext_from_word2vec_binaries(model, tmp_path):
    word2vec = str(tmp_path / "w2v.bin")
    write_word2vec_binary(word2vec, {"cat": [0.0, 3.0, 4.0], "dog": [0.0, 1.0, 0.0]})
    assert is_fasttext_binary(model[0]) and not is_fasttext_binary(word2vec)
    tags, vectors = load_tag_vectors(word2vec, ["cat"])
    assert tags == ["cat"] and vectors.shape == (1, 3)


def test_a_vocabulary_of_unseen_phrases_from_a_fasttext_model(model, tmp_path):
    (tmp_path / "tags.txt").write_text("red circle\nblue squares\n")
    (tmp_path / "unseen.txt").write_text("blue squares\n")
    vocabulary = TagVocabulary.from_files(str(tmp_path / "tags.txt"), model[0], str(tmp_path / "unseen.txt"))
    assert vocabulary.unseen_tags == ["blue squares"] and vocabulary.dim == 16


def test_a_damaged_fasttext_binary_is_an_error_naming_the_file(model, tmp_path):
    data = open(model[0], "rb").read()
    damaged = tmp_path / "damaged.bin"
    for size, where in ((40, "its header"), (200, "word "), (len(data) // 2, "input matrix")):
        damaged.write_bytes(data[:size])
        with pytest.raises(ValueError, match=f"damaged.bin: a FastText binary that cannot be read.*{where}"):
            load_tag_vectors(str(damaged), ["red"])


if __name__ == "__main__":
    testing.run(__file__)
