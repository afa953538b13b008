"""Tiny tag-vector models of the demo's words, made where nothing can be downloaded: a FastText
model trained on sentences of the demo's tag words (its subword vectors), and a randomly
initialised keras_hub CLIP saved as a local preset directory (plumbing only: its text
embeddings mean nothing). The tests and the methods comparison's tag-source rows use them:

    python -c "from sdl_keras.embeddings import demo_models; demo_models.write_demo_models('data/demo', 64)"
"""

import os

import numpy as np

from pipelines.readers.demo import COLOURS, SHAPES

WORDS = list(COLOURS) + list(SHAPES)
# Words the tiny tokenizer knows whole (the templates' and the demo's); any other word is
# spelled out in single characters, as CLIP's BPE does with a word it has no merges for.
TEMPLATE_WORDS = ["a", "photo", "of", "the", "picture"]


def demo_sentences(count=400, seed=0):
    """Sentences of the demo's colours and shapes, "a red circle beside a blue square"."""
    rng = np.random.default_rng(seed)
    return [["a", rng.choice(WORDS[:len(COLOURS)]), rng.choice(SHAPES), "beside", "a",
             rng.choice(WORDS[:len(COLOURS)]), rng.choice(SHAPES)] for _ in range(count)]


def train_fasttext(folder, dim=16, name="model"):
    """(NAME.bin in FastText's format, NAME.vec of the same vectors) of a FastText model
    (gensim's trainer, FastText's n-grams 3-5) trained on `demo_sentences`."""
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    sentences = demo_sentences()
    model = FastText(vector_size=dim, window=3, min_count=1, min_n=3, max_n=5, bucket=2000, seed=0, workers=1)
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=5)
    paths = os.path.join(folder, name + ".bin"), os.path.join(folder, name + ".vec")
    save_facebook_model(model, paths[0])
    model.wv.save_word2vec_format(paths[1])
    return paths


def clip_vocabulary(words=WORDS + TEMPLATE_WORDS):
    """(vocabulary {token: id}, merges) of a byte-pair vocabulary holding every lowercase
    letter and '.', and the merges that build each of `words` whole. The end token has the
    highest id: CLIP pools the sequence at argmax(token_ids), its end token."""
    tokens, merges = [], []
    for char in "abcdefghijklmnopqrstuvwxyz.":
        tokens += [char, char + "</w>"]
    for word in words:
        for k in range(2, len(word) + 1):
            piece = word[:k] + ("</w>" if k == len(word) else "")
            rule = f"{word[:k - 1]} {word[k - 1]}" + ("</w>" if k == len(word) else "")
            if piece not in tokens:
                tokens.append(piece)
            if rule not in merges:
                merges.append(rule)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def save_clip_preset(folder, projection_dim=16, sequence_length=16, seed=0):
    """A randomly initialised keras_hub CLIPBackbone (one tiny text and vision layer each)
    with its CLIPTokenizer and CLIPPreprocessor, saved as a preset directory; returns it."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocabulary, merges = clip_vocabulary()
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=len(vocabulary), embedding_dim=16, hidden_dim=16,
                                            num_layers=1, num_heads=2, intermediate_dim=32,
                                            max_sequence_length=sequence_length)
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2,
                                                intermediate_dim=32, image_shape=(16, 16, 3))
    backbone = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text,
                                             projection_dim=projection_dim)
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges)
    preprocessor = keras_hub.models.CLIPPreprocessor(tokenizer, sequence_length=sequence_length)
    backbone.save_to_preset(folder)
    preprocessor.save_to_preset(folder)
    return folder


def write_demo_models(folder, dim=64):
    """FOLDER/fasttext.bin and .vec (`train_fasttext`) and FOLDER/clip_random (`save_clip_preset`),
    both `dim`-dimensional (the demo's words.vec: 64); returns their paths."""
    os.makedirs(folder, exist_ok=True)
    return (*train_fasttext(folder, dim, "fasttext"), save_clip_preset(os.path.join(folder, "clip_random"),
                                                                       projection_dim=dim))
