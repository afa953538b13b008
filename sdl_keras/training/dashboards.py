"""What a training run shows in TensorBoard, beside the scalars `keras.callbacks.TensorBoard`
writes from the epoch logs (loss, learning rate, SDLMetrics and LossParts (the loss's
rank term, diversity weight and regularization, "epoch_loss/..."), the zero-shot figures
of `callbacks.ZeroShotEvaluation` under the "validation" run):

- `TensorBoardDashboards`, a callback: validation images with their top-K tags (unseen
  tags marked, with the dominant row of A for each), the same as a text table, a
  histogram of how often each principal direction is the dominant row (rows that never
  win are wasted), the embedding projector of the tag vectors (seen/unseen as
  metadata) and the run's hyperparameters for the HParams dashboard.

Summaries are written with TensorFlow's summary API, the TensorBoard file format (as
`keras.callbacks.TensorBoard` does on every Keras backend).
"""

import os

import keras
import numpy as np

VALIDATION_RUN = "validation"
PROJECTOR_TENSOR = "tag_vectors"


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


# Label colours of a predicted tag: correct, wrong, not annotated.
_LABEL_COLOURS = {1: (70, 200, 90), 0: (230, 80, 70), -1: (150, 150, 150)}


def render_top_tags(image, tags, labels, scores, rows, unseen, top_k=5, scale=None):
    """One validation image beside its top-K tags, as an (H, W, 3) uint8 picture.

    Each line: rank, tag, "*" for an unseen (zero-shot) tag, the score and the dominant
    row of A ("r3"); green when the tag is a positive label, red when negative, grey
    when unannotated.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    size = image.shape[0]
    scale = scale or max(1, 128 // size)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize((size * scale, size * scale))
    line_height, text_width = 15, 260
    height = max(picture.height, line_height * (top_k + 2))
    canvas = Image.new("RGB", (picture.width + text_width, height), (20, 20, 20))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    unseen = set(unseen)
    order = np.argsort(-np.asarray(scores), kind="stable")[:top_k]
    x = picture.width + 6
    draw.text((x, 2), "top tags (* unseen)", fill=(230, 230, 230), font=font)
    for line, tag in enumerate(order, start=1):
        text = f"{line}. {tags[tag]}{'*' if tag in unseen else ''}  {scores[tag]:.2f}  r{rows[tag]}"
        draw.text((x, 2 + line * line_height), text, fill=_LABEL_COLOURS[int(labels[tag])], font=font)
    positives = [tags[t] + ("*" if t in unseen else "") for t in np.nonzero(np.asarray(labels) == 1)[0]]
    draw.text((x, 2 + (top_k + 1) * line_height), "true: " + ", ".join(positives)[:40], fill=(200, 200, 120),
              font=font)
    return np.asarray(canvas)


def top_tags_markdown(sample, tags, unseen, top_k=5):
    """The top-K tags of each sample image as a Markdown table."""
    unseen = set(unseen)
    lines = ["| image | rank | tag | unseen | label | score | row |", "|---|---|---|---|---|---|---|"]
    for i, (labels, scores, rows) in enumerate(zip(sample["labels"], sample["scores"], sample["rows"])):
        for rank, tag in enumerate(np.argsort(-scores, kind="stable")[:top_k], start=1):
            lines.append(
                f"| {i} | {rank} | {tags[tag]} | {'yes' if tag in unseen else ''} | {int(labels[tag])} "
                f"| {scores[tag]:.3f} | {rows[tag]} |"
            )
    return "\n".join(lines)


def write_projector(log_dir, vocabulary):
    """The tag vectors for TensorBoard's embedding projector, with each tag's name and
    whether it is seen or unseen as metadata (TSV files beside projector_config.pbtxt)."""
    from tensorboard.plugins import projector

    os.makedirs(log_dir, exist_ok=True)
    np.savetxt(os.path.join(log_dir, "tag_vectors.tsv"), vocabulary.vectors, delimiter="\t", fmt="%.6g")
    unseen = set(vocabulary.unseen)
    with open(os.path.join(log_dir, "tag_metadata.tsv"), "w", encoding="utf-8") as f:
        f.write("tag\tsplit\n")
        for i, tag in enumerate(vocabulary.tags):
            f.write(f"{tag.replace(chr(9), ' ')}\t{'unseen' if i in unseen else 'seen'}\n")
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = PROJECTOR_TENSOR
    embedding.tensor_path = "tag_vectors.tsv"
    embedding.metadata_path = "tag_metadata.tsv"
    projector.visualize_embeddings(log_dir, config)


def hparams_of(config):
    """HParams-dashboard values of a TrainConfig, by flat field name: numbers, strings and
    booleans as they are; None as "none"; anything else as its str()."""
    values = {}
    for key, value in config.flat().items():
        if value is None:
            value = "none"
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        values[key] = value
    return values


class TensorBoardDashboards(keras.callbacks.Callback):
    """Writes the image, text, histogram, projector and HParams dashboards (module
    docstring) of a run into `log_dir`, beside `keras.callbacks.TensorBoard(log_dir)`.

    The images, text and histograms come from `evaluation` (a
    `callbacks.ZeroShotEvaluation` placed before this callback) each epoch it runs, under
    the "validation" run: "top_tags" (images), "top_tags_table" (text), "dominant_row" (a
    histogram with one bucket per row of A over the validation set's positive (image,
    tag) pairs) and the scalar "dominant_row/unused_rows".

    Args:
        log_dir: the run's TensorBoard folder.
        evaluation: the ZeroShotEvaluation whose results are shown.
        top_k: tags shown per image.
        hparams: optional {name: value} for the HParams dashboard (`hparams_of(config)`).
        projector: write the tag-vector projector at the start of training.
    """

    def __init__(self, log_dir, evaluation, top_k=5, hparams=None, projector=True):
        super().__init__()
        self.log_dir = str(log_dir)
        self.evaluation = evaluation
        self.top_k = int(top_k)
        self.hparams = hparams
        self.projector = projector
        self._writer = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        vocabulary = self.evaluation.vocabulary
        if self.projector:
            write_projector(self.log_dir, vocabulary)
        if self.hparams:
            from tensorboard.plugins.hparams import api as hp

            writer = tf.summary.create_file_writer(self.log_dir)
            with writer.as_default():
                hp.hparams(self.hparams)
            writer.close()
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, VALIDATION_RUN))

    def on_epoch_end(self, epoch, logs=None):
        last = self.evaluation.last
        if last is None or last["epoch"] != epoch:
            return
        import tensorflow as tf
        from tensorboard.plugins.histogram import metadata as histogram_metadata

        vocabulary = self.evaluation.vocabulary
        with self._writer.as_default(step=epoch):
            if "images" in last:
                pictures = [
                    render_top_tags(image, vocabulary.tags, labels, scores, rows, vocabulary.unseen, self.top_k)
                    for image, labels, scores, rows in zip(last["images"], last["labels"], last["scores"],
                                                           last["rows"])
                ]
                tf.summary.image("top_tags", np.stack(pictures), max_outputs=len(pictures),
                                 description="Validation images, their top tags (* unseen), score, dominant row.")
                table = top_tags_markdown(last, vocabulary.tags, vocabulary.unseen, self.top_k)
                tf.summary.text("top_tags_table", table)
            wins = np.asarray(last["row_wins"], dtype=np.float64)
            rows = np.arange(len(wins), dtype=np.float64)
            tf.summary.write(
                "dominant_row",
                tensor=np.stack([rows - 0.5, rows + 0.5, wins], axis=1),
                metadata=histogram_metadata.create_summary_metadata(
                    "dominant_row", "How often each row of A is the dominant one for a true tag."
                ),
            )
            tf.summary.scalar("dominant_row/unused_rows", float(np.sum(wins == 0)))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
