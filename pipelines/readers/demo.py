"""The synthetic demo dataset: coloured shapes with compositional tags.

SYNTHETIC: this is the smoke test and demo of the whole flow (data -> train ->
evaluate -> export), not a benchmark; its figures say nothing about real images.

Each image shows 1-3 objects; each object is a colour and a shape, and its tag is
the pair ("red circle"). Word vectors are random per word and a tag's vector is the
mean of its words' (as `load_tag_vectors` averages multi-word tags), so a colour and
a shape seen apart in training compose into a vector for an unseen pair. Some pairs
are held out: training images contain only seen pairs, test images contain both.
Everything is deterministic from the seed and written in the generic manifest
format (pipelines/readers/manifest.py) with a FastText-format word-vector file.

The optional validation split (`num_validation`) is drawn like the test split (half of
its images hold an unseen pair) but labelled like training data: its seen tags only
(its records list the seen tags it lacks as `negative_tags`, so every unseen tag is
unknown, -1). Training images never show an unseen object, so a split held out of
them cannot show the model a novel one; real photographs do, unlabelled, and this
split does the same. It is what the demo calibrates on (configs/demo.flags).

Files written under the output folder:
  images/{train,test,validation}/NNNNN.png, train.jsonl, test.jsonl, validation.jsonl,
  words.vec (FastText text), tags.txt, unseen_tags.txt
"""

import dataclasses
import os

import numpy as np
from PIL import Image, ImageDraw

from pipelines.readers.manifest import write_manifest

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
    "orange": (245, 140, 20),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    num_train: int = 4000
    num_test: int = 1000
    image_size: int = 48
    max_objects: int = 3
    embed_dim: int = 64
    seed: int = 0
    num_validation: int = 0


def demo_tags():
    """All colour-shape tags, and the held-out (unseen) ones: two per shape, one per colour
    at most, so every colour and every shape is also seen in other pairs."""
    tags = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    colours = list(COLOURS)
    unseen = [f"{colours[i]} {SHAPES[(2 * i) % len(SHAPES)]}" for i in range(len(colours))]
    return tags, unseen


def _draw(draw, shape, colour, cx, cy, r):
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=colour)
    elif shape == "cross":
        w = 0.35 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(0.35 * r)))
    else:
        raise ValueError(f"Unknown demo shape {shape!r}.")


def render_image(objects, size, rng):
    """An image of (colour, shape) objects on a noisy dark background, each in its own cell."""
    background = rng.integers(20, 60, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    cells = rng.permutation(4)[: len(objects)]
    half = size / 2
    for (colour, shape), cell in zip(objects, cells):
        r = rng.uniform(0.28, 0.42) * half
        cx = (cell % 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
        cy = (cell // 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
        _draw(draw, shape, fill, cx, cy, r)
    return image


def _sample_objects(rng, pairs, max_objects, must_include=None):
    count = int(rng.integers(1, max_objects + 1))
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=count, replace=True)]
    if must_include is not None:
        chosen[0] = must_include
    return chosen


def write_word_vectors(path, words, dim, rng):
    """Random per-word vectors in FastText's text format (header line, then word + values)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{len(words)} {dim}\n")
        for word in words:
            values = rng.standard_normal(dim)
            f.write(word + " " + " ".join(f"{v:.6f}" for v in values) + "\n")


def make_demo_dataset(out_dir, config=DemoConfig(), progress=None):
    """Writes the demo dataset to `out_dir` and returns the paths of its files."""
    rng = np.random.default_rng(config.seed)
    tags, unseen = demo_tags()
    seen_pairs = [tuple(t.split()) for t in tags if t not in unseen]
    all_pairs = [tuple(t.split()) for t in tags]
    unseen_pairs = [tuple(t.split()) for t in unseen]
    os.makedirs(out_dir, exist_ok=True)
    write_word_vectors(os.path.join(out_dir, "words.vec"), list(COLOURS) + list(SHAPES), config.embed_dim, rng)
    with open(os.path.join(out_dir, "tags.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tags) + "\n")
    with open(os.path.join(out_dir, "unseen_tags.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(unseen) + "\n")

    seen_tags = [t for t in tags if t not in unseen]
    # The validation split comes last: the training and test splits do not depend on it.
    splits = (("train", config.num_train), ("test", config.num_test), ("validation", config.num_validation))
    for split, count in splits:
        if split == "validation" and not count:
            continue
        folder = os.path.join(out_dir, "images", split)
        os.makedirs(folder, exist_ok=True)
        records = []
        for i in range(count):
            if split == "train":
                objects = _sample_objects(rng, seen_pairs, config.max_objects)
            else:
                # Half of the test images hold an unseen pair, so ZSL has images to rank.
                include = unseen_pairs[rng.integers(len(unseen_pairs))] if i % 2 == 0 else None
                objects = _sample_objects(rng, all_pairs, config.max_objects, include)
            name = f"images/{split}/{i:05d}.png"
            render_image(objects, config.image_size, rng).save(os.path.join(out_dir, name))
            present = sorted({" ".join(o) for o in objects})
            if split == "validation":
                # Seen tags only: a present unseen pair is, like every unseen tag, unknown.
                records.append({"image": name, "tags": [t for t in present if t not in unseen],
                                "negative_tags": [t for t in seen_tags if t not in present]})
            else:
                records.append({"image": name, "tags": present})
            if progress is not None:
                progress(split, i + 1, count)
        write_manifest(os.path.join(out_dir, f"{split}.jsonl"), records)
    names = ["train.jsonl", "test.jsonl", "words.vec", "tags.txt", "unseen_tags.txt"]
    return {name: os.path.join(out_dir, name) for name in names + ["validation.jsonl"] * bool(config.num_validation)}
