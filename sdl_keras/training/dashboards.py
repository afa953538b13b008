"""What a training run shows in TensorBoard, beside the scalars `keras.callbacks.TensorBoard`
writes from the epoch logs (loss, learning rate, SDLMetrics and LossParts (the loss's
rank term, diversity weight and regularization, "epoch_loss/..."), the zero-shot figures
of `callbacks.ZeroShotEvaluation` under the "validation" run):

- `TensorBoardDashboards`, a callback: validation images with their top-K tags (unseen
  tags marked, with the dominant row of A for each), the same as a text table, a
  histogram of how often each principal direction is the dominant row (rows that never
  win are wasted), the embedding projector of the tag vectors (seen/unseen as
  metadata) and the run's hyperparameters for the HParams dashboard.

- `render_reliability_diagram` / `write_reliability_diagrams`: how often a tag applies
  against the probability given it, per probability bin, for seen and unseen tags before
  and after calibration (`sdl_keras.calibrate` writes them under the "calibration" run for
  the validation split, `sdl_keras.evaluate` under the "test" run for the test split).

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


# Curve colours of a reliability diagram, in the order the curves are given.
_CURVE_COLOURS = ((150, 150, 150), (40, 110, 220), (230, 120, 30), (60, 170, 80))


def render_reliability_diagram(curves, title="", size=300):
    """A reliability diagram as an (H, W, 3) uint8 picture: for each curve (name ->
    `evaluation.reliability_curve` result, with an optional "ece"), the fraction of
    positive pairs (y) against the mean probability (x) of each non-empty bin, the
    diagonal of perfect calibration, and under the plot how many pairs each bin holds."""
    from PIL import Image, ImageDraw

    margin, strip, legend = 34, 46, 16 * len(curves) + 8
    width, height = size + 2 * margin, size + 2 * margin + strip + legend
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    left, top, bottom = margin, margin, margin + size

    def point(x, y):
        return left + x * size, bottom - y * size

    draw.rectangle((left, top, left + size, bottom), outline=(0, 0, 0))
    for tick in np.linspace(0, 1, 6):
        x, y = point(tick, tick)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.text((x - 8, bottom + 6), f"{tick:.1f}", fill=(0, 0, 0), font=font)
        draw.text((2, y - 6), f"{tick:.1f}", fill=(0, 0, 0), font=font)
    draw.line((*point(0, 0), *point(1, 1)), fill=(190, 190, 190), width=1)
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    draw.text((left + size // 2 - 40, bottom + 20), "probability given", fill=(0, 0, 0), font=font)
    strip_top = bottom + 36
    draw.text((left + size - 120, strip_top - 2), "pairs per bin (log)", fill=(90, 90, 90), font=font)
    for i, (name, curve) in enumerate(curves.items()):
        colour = _CURVE_COLOURS[i % len(_CURVE_COLOURS)]
        count = np.asarray(curve["count"])
        bins = len(count)
        filled = np.nonzero(count)[0]
        points = [point(curve["confidence"][b], curve["frequency"][b]) for b in filled]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        # Pairs per bin, on a log scale: most pairs sit in the lowest bin.
        heights = np.log1p(count) / max(np.log1p(count).max(), 1e-9) * (strip - 14) / len(curves)
        for b in filled:
            x0 = left + b * size / bins + i * (size / bins) / len(curves)
            x1 = x0 + (size / bins) / len(curves) - 1
            y1 = strip_top + (i + 1) * (strip - 14) / len(curves)
            draw.rectangle((x0, y1 - heights[b], x1, y1), fill=colour)
        ece = f"  ECE {curve['ece']:.3f}" if "ece" in curve else ""
        draw.text((left, strip_top + strip - 8 + 16 * i), f"{name}: {int(count.sum())} pairs{ece}", fill=colour,
                  font=font)
    draw.text((left + size - 150, top + 4), "fraction positive (y)", fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def write_reliability_diagrams(log_dir, diagrams, step=0):
    """Image summaries "reliability/<name>" in `log_dir`, one per entry of `diagrams`
    (name -> (title, curves), as `render_reliability_diagram` takes them)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=step):
        for name, (title, curves) in diagrams.items():
            tf.summary.image(f"reliability/{name}", render_reliability_diagram(curves, title)[None],
                             description=f"Reliability diagram: {title}. Fraction of positive (image, tag) pairs "
                             "against the probability given them, per bin of 1/15.")
    writer.close()


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
