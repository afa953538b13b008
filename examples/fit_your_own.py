"""SDL from your own code: plain `model.fit` on tensors you can see, then the zero-shot
evaluation, on the demo data (the same calls work on any dataset the readers read).

    python -m pipelines.demo --flagfile=configs/demo_data.flags    # writes data/demo/
    python examples/fit_your_own.py --data=data/demo

What `python -m sdl_keras.train` does for you, written out: read the labels, keep the
seen tags' columns for the loss, build tf.data batches, fit, score every tag (seen and
unseen) and evaluate.
"""

import argparse
import os

import keras
import numpy as np

from pipelines.files import image_label_dataset
from pipelines.readers import read_manifest
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.evaluation import evaluate_scores, format_table, random_scores
from sdl_keras.losses import SDLLoss, max_positives_needed
from sdl_keras.metrics import SDLMetrics
from sdl_keras.models import build_sdl_model
from sdl_keras.scoring import tag_scores
from sdl_keras.training import seen_labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/demo", help="A folder written by python -m pipelines.demo.")
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps_per_epoch", type=int, default=None)
    args = parser.parse_args()
    data = args.data

    # Every tag (seen and unseen) with its word vector; `unseen` indexes the zero-shot ones.
    vocab = TagVocabulary.from_files(os.path.join(data, "tags.txt"), os.path.join(data, "words.vec"),
                                     os.path.join(data, "unseen_tags.txt"))
    # Image paths and labels (N, C) over all C tags: 1 positive, 0 negative, -1 unknown.
    train = read_manifest(os.path.join(data, "train.jsonl"), vocab.tags)
    test = read_manifest(os.path.join(data, "test.jsonl"), vocab.tags)

    # The loss ranks the seen tags only: its vectors are vocab.seen_vectors (S, d), so its
    # labels are the same S columns, train.labels[:, vocab.seen]. seen_labels does that
    # slicing, and refuses a training image labelled with an unseen tag (a leak).
    train_labels = seen_labels(train.labels, vocab, source="train.jsonl")
    print(f"{len(train)} training images, labels {train.labels.shape} -> seen columns {train_labels.shape}")

    # Batches of (uint8 images (B, S, S, 3), float32 labels (B, S)), decoded in parallel.
    train_ds = image_label_dataset(train.paths, train_labels, args.image_size, args.batch_size, shuffle=True,
                                   seed=0, repeat=True, drop_remainder=True)

    model = build_sdl_model("small_cnn", num_rows=4, embed_dim=vocab.dim, image_size=args.image_size)
    # P, the most positives of one image: a static bound, so XLA can compile the loss.
    loss = SDLLoss(vocab.seen_vectors, reg_weight=0.3, max_positives=max_positives_needed(train_labels))
    model.compile(
        optimizer=keras.optimizers.AdamW(3e-3, weight_decay=1e-4),
        loss=loss,
        metrics=[SDLMetrics(loss, ks=(3, 5))],  # scored with the loss's vectors, saved with it
    )
    model.fit(train_ds, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch or len(train) // args.batch_size,
              verbose=2)

    # Test batches keep the labels over every tag: scoring needs no training labels.
    test_ds = image_label_dataset(test.paths, test.labels, args.image_size, args.batch_size)
    matrices, labels = [], []
    for images, batch_labels in test_ds:
        matrices.append(model.predict_on_batch(images))  # A: (B, M, d)
        labels.append(batch_labels.numpy())
    scores, rows = tag_scores(np.concatenate(matrices), vocab.vectors)  # (N, C): every tag, unseen too
    labels = np.concatenate(labels)
    results = evaluate_scores(np.asarray(scores), labels, vocab.unseen, ks=(3, 5))
    chance = evaluate_scores(random_scores(labels.shape), labels, vocab.unseen, ks=(3, 5))
    print(format_table({"SDL (this script)": results, "random scores": chance}, ks=(3, 5)))


if __name__ == "__main__":
    main()
