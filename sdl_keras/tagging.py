"""Tagging image files offline with an exported SavedModel (no server): the library side of
`python -m sdl_keras.tag`.

The model is an export folder (its newest version is used) or one version folder. Folders
are searched recursively for JPEG, PNG, GIF and BMP files. Images go through the export's
`serving_default` signature in batches, so they are decoded exactly as in serving; an image
that cannot be read is reported on its own line and does not fail its batch. Writes JSON
lines or CSV (image, top-K tags, scores, dominant rows, unseen flags, and for a calibrated
export probabilities and above-threshold flags); `annotate` draws each image with its
tags beside it, unseen tags marked, only the tags above the threshold when one is given.

Thresholds: a probability (one for every tag), "tuned" (the per-tag thresholds the
calibration tuned on the validation split, read from the export's calibration.json), or
none (the mask the export computes, with the threshold it was exported with).
"""

import csv
import json
import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
OUTPUT_FIELDS = ("tags", "scores", "rows", "unseen")
CALIBRATED_FIELDS = ("probabilities", "above_threshold")


def find_images(paths):
    """The image files named by `paths` (files as given, folders searched), in order."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"No such image file or folder: {path}")
    return found


class Tagger:
    """The `serving_default` signature of an export, as a Python function on image bytes.

    Args:
        model_path: an export folder or one version of it.
        threshold: None (the export's own above_threshold mask), "tuned" or a probability;
            a threshold needs a calibrated export.
    """

    def __init__(self, model_path, threshold=None):
        import tensorflow as tf

        from sdl_keras.saved_model import read_calibration_file, resolve_version_dir

        self.path = resolve_version_dir(model_path)
        self._tf = tf
        self._signature = tf.saved_model.load(self.path).signatures["serving_default"]
        self.calibration, metadata = read_calibration_file(self.path)
        self.threshold = threshold
        if self.calibration is None and threshold is not None:
            raise ValueError(f"{self.path} is an uncalibrated export ({metadata.get('reason')}): it has no "
                             "probabilities to threshold. Calibrate the run (python -m sdl_keras.calibrate) and "
                             "export it again.")
        self._thresholds = None
        if threshold is not None:
            vector = self.calibration.threshold_vector(threshold)
            self._thresholds = dict(zip(self.calibration.tags, vector.tolist()))

    def __call__(self, images):
        """[{tags, scores, rows, unseen (, probabilities, above_threshold)}] for a batch of encoded images."""
        outputs = self._signature(images=self._tf.constant(images, dtype=self._tf.string))
        outputs = {k: v.numpy() for k, v in outputs.items()}
        records = []
        for i in range(len(images)):
            record = {
                "tags": [t.decode("utf-8") for t in outputs["tags"][i]],
                "scores": [round(float(s), 6) for s in outputs["scores"][i]],
                "rows": outputs["rows"][i].tolist(),
                "unseen": outputs["unseen"][i].tolist(),
            }
            if "probabilities" in outputs:
                record["probabilities"] = [round(float(p), 6) for p in outputs["probabilities"][i]]
                if self._thresholds is None:
                    record["above_threshold"] = outputs["above_threshold"][i].tolist()
                else:
                    # The probabilities as written: a reader of the records gets the same flags from them.
                    record["above_threshold"] = [p >= self._thresholds[t] for t, p in
                                                 zip(record["tags"], record["probabilities"])]
            records.append(record)
        return records


def tag_files(tagger, files, batch_size=16, progress=None):
    """Yields one record per file, in order: {"image", tags...} or {"image", "error"}.

    Unreadable files are set aside before batching; a batch that still fails (an image
    whose header is fine but whose data is not) is retried image by image, so one bad
    image never costs its neighbours their tags.
    """
    import tensorflow as tf

    from pipelines.decode import error_text, image_header

    done = failed = 0
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        records = {}
        good = []
        for path in batch:
            try:
                with open(path, "rb") as f:
                    data = f.read()
                image_header(data)
                good.append((path, data))
            except (OSError, ValueError) as error:
                records[path] = {"image": path, "error": f"{path} {error}" if isinstance(error, ValueError) else str(error)}
        try:
            results = tagger([data for _, data in good]) if good else []
            records.update({path: {"image": path, **r} for (path, _), r in zip(good, results)})
        except tf.errors.InvalidArgumentError:
            for path, data in good:
                try:
                    records[path] = {"image": path, **tagger([data])[0]}
                except tf.errors.InvalidArgumentError as error:
                    records[path] = {"image": path, "error": f"{path} cannot be decoded: {error_text(error)}"}
        for path in batch:
            failed += "error" in records[path]
            yield records[path]
        done += len(batch)
        if progress:
            progress.update(done, failed=failed)


def write_records(records, stream, fmt):
    """Writes records as JSON lines or CSV (list fields joined with ';'); returns the
    number of images that failed."""
    failed = 0
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=("image", *OUTPUT_FIELDS, *CALIBRATED_FIELDS, "error"))
        writer.writeheader()
    for record in records:
        failed += "error" in record
        if writer:
            writer.writerow({k: _csv_cell(v) for k, v in record.items()})
        else:
            stream.write(json.dumps(record) + "\n")
        stream.flush()
    return failed


def _csv_cell(value):
    if not isinstance(value, list):
        return value
    return ";".join(str(int(x)) if isinstance(x, bool) else str(x) for x in value)


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotate(image_path, record, out_path, panel_width=300, min_height=240, above_only=False):
    """Writes the image with a panel of its tags beside it (unseen tags in red, marked
    '(unseen)'), like the figures of the official repository; with the probability of each
    tag when the record has them, and with `above_only` only the tags above the threshold."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as image:
        image = image.convert("RGB")
    scale = max(1.0, min_height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    shown = [i for i in range(len(record["tags"])) if not above_only or record["above_threshold"][i]]
    line = 20
    height = max(image.height, line * (len(shown) + 2))
    canvas = Image.new("RGB", (image.width + panel_width, height), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    x = image.width + 10
    heading = f"{len(shown)} tags above the threshold" if above_only else f"top {len(shown)} tags"
    draw.text((x, 6), f"{heading}  (red: unseen)", fill="black", font=font)
    for row, i in enumerate(shown, start=1):
        tag, score, unseen = record["tags"][i], record["scores"][i], record["unseen"][i]
        probability = f"  p={record['probabilities'][i]:.2f}" if "probabilities" in record else ""
        text = f"{tag}  {score:.3f}{probability}" + ("  (unseen)" if unseen else "")
        draw.text((x, 6 + line * row), text, fill=(200, 0, 0) if unseen else "black", font=font)
    canvas.save(out_path)


def annotation_path(out_dir, image_path, taken):
    stem = os.path.splitext(os.path.basename(image_path))[0]
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return os.path.join(out_dir, name)


def tag_paths(model, paths, output, fmt=None, batch_size=16, annotate_dir=None, threshold=None):
    """Tags the image files and folders in `paths` with an export and writes the records to
    `output` (a path, or "-" for stdout) as JSON lines or CSV (`fmt`, default from the
    suffix); with `annotate_dir`, also the annotated images (only the tags above
    `threshold` when one is given: "tuned" or a probability). Returns (images tagged,
    images failed, the Tagger used)."""
    import sys

    from pipelines.progress import Progress

    files = find_images(paths)
    if not files:
        raise FileNotFoundError("No images to tag: give image files or folders holding .jpg/.png/.gif/.bmp files.")
    tagger = Tagger(model, threshold)
    fmt = fmt or ("csv" if output.lower().endswith(".csv") else "jsonl")
    if annotate_dir:
        os.makedirs(annotate_dir, exist_ok=True)
    taken = set()

    def annotated(records):
        for record in records:
            if annotate_dir and "error" not in record:
                annotate(record["image"], record, annotation_path(annotate_dir, record["image"], taken),
                         above_only=threshold is not None)
            yield record

    records = annotated(tag_files(tagger, files, batch_size, Progress(len(files), "image")))
    if output == "-":
        failed = write_records(records, sys.stdout, fmt)
    else:
        with open(output, "w", newline="" if fmt == "csv" else None, encoding="utf-8") as stream:
            failed = write_records(records, stream, fmt)
    return len(files) - failed, failed, tagger
