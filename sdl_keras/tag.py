"""Tags image files offline with an exported SavedModel (no server).

    python -m sdl_keras.tag --model saved_models/demo photos/ extra.jpg --output tags.jsonl
    python -m sdl_keras.tag --model saved_models/demo/3 photos/ --output tags.csv --annotate figures/

`--model` is an export folder (its newest version is used) or one version folder. Folders
are searched recursively for JPEG, PNG, GIF and BMP files. Images go through the export's
`serving_default` signature in batches, so they are decoded exactly as in serving; an image
that cannot be read is reported on its own line and does not fail its batch. Writes JSON
lines or CSV (image, top-K tags, scores, dominant rows, unseen flags); `--annotate DIR`
also writes each image with its tags drawn beside it, unseen tags marked.
"""

import csv
import json
import os
import sys
import time

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
OUTPUT_FIELDS = ("tags", "scores", "rows", "unseen")


def resolve_version_dir(path):
    """`path` itself when it is a SavedModel, else its newest integer version folder."""
    from sdl_keras.export import list_versions

    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = [v for v in list_versions(path) if os.path.exists(os.path.join(path, str(v), "saved_model.pb"))]
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel nor a folder of version folders holding one.")
    return os.path.join(path, str(versions[-1]))


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


class _Progress:
    """A one-line progress bar on stderr (stdout may carry the output)."""

    def __init__(self, total, stream=sys.stderr, width=30):
        self.total, self.stream, self.width = total, stream, width
        self.start = time.monotonic()

    def update(self, done, failed):
        filled = int(self.width * done / max(self.total, 1))
        rate = done / max(time.monotonic() - self.start, 1e-9)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} images, "
            f"{failed} failed, {rate:.1f}/s"
        )
        if done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


class Tagger:
    """The `serving_default` signature of an export, as a Python function on image bytes."""

    def __init__(self, model_path):
        import tensorflow as tf

        self.path = resolve_version_dir(model_path)
        self._tf = tf
        self._signature = tf.saved_model.load(self.path).signatures["serving_default"]

    def __call__(self, images):
        """[{tags, scores, rows, unseen}] for a batch of encoded images."""
        outputs = self._signature(images=self._tf.constant(images, dtype=self._tf.string))
        outputs = {k: v.numpy() for k, v in outputs.items()}
        return [
            {
                "tags": [t.decode("utf-8") for t in outputs["tags"][i]],
                "scores": [round(float(s), 6) for s in outputs["scores"][i]],
                "rows": outputs["rows"][i].tolist(),
                "unseen": outputs["unseen"][i].tolist(),
            }
            for i in range(len(images))
        ]


def tag_files(tagger, files, batch_size=16, progress=None):
    """Yields one record per file, in order: {"image", tags...} or {"image", "error"}.

    Unreadable files are set aside before batching; a batch that still fails (an image
    whose header is fine but whose data is not) is retried image by image, so one bad
    image never costs its neighbours their tags.
    """
    import tensorflow as tf

    from sdl_keras.serving.decoding import error_text, image_header

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
            progress.update(done, failed)


def write_records(records, stream, fmt):
    """Writes records as JSON lines or CSV (list fields joined with ';'); returns the
    number of images that failed."""
    failed = 0
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=("image", *OUTPUT_FIELDS, "error"))
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


def annotate(image_path, record, out_path, panel_width=260, min_height=240):
    """Writes the image with a panel of its tags beside it (unseen tags in red, marked
    '(unseen)'), like the figures of the official repository."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as image:
        image = image.convert("RGB")
    scale = max(1.0, min_height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    line = 20
    height = max(image.height, line * (len(record["tags"]) + 2))
    canvas = Image.new("RGB", (image.width + panel_width, height), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    x = image.width + 10
    draw.text((x, 6), f"top {len(record['tags'])} tags  (red: unseen)", fill="black", font=font)
    for i, (tag, score, unseen) in enumerate(zip(record["tags"], record["scores"], record["unseen"])):
        text = f"{tag}  {score:.3f}" + ("  (unseen)" if unseen else "")
        draw.text((x, 6 + line * (i + 1)), text, fill=(200, 0, 0) if unseen else "black", font=font)
    canvas.save(out_path)


def annotation_path(out_dir, image_path, taken):
    stem = os.path.splitext(os.path.basename(image_path))[0]
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return os.path.join(out_dir, name)


def main(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    files = find_images(argv[1:])
    if not files:
        raise SystemExit("No images to tag: give image files or folders holding .jpg/.png/.gif/.bmp files.")
    tagger = Tagger(FLAGS.model)
    fmt = FLAGS.format or ("csv" if FLAGS.output.lower().endswith(".csv") else "jsonl")
    if FLAGS.annotate:
        os.makedirs(FLAGS.annotate, exist_ok=True)
    taken = set()

    def annotated(records):
        for record in records:
            if FLAGS.annotate and "error" not in record:
                annotate(record["image"], record, annotation_path(FLAGS.annotate, record["image"], taken))
            yield record

    records = annotated(tag_files(tagger, files, FLAGS.batch_size, _Progress(len(files))))
    if FLAGS.output == "-":
        failed = write_records(records, sys.stdout, fmt)
    else:
        with open(FLAGS.output, "w", newline="" if fmt == "csv" else None, encoding="utf-8") as stream:
            failed = write_records(records, stream, fmt)
    print(f"Tagged {len(files) - failed} of {len(files)} images with {tagger.path}", file=sys.stderr)
    return 1 if failed else 0


def define_flags():
    from absl import flags

    flags.DEFINE_string("model", None, "An export folder (saved_models/NAME) or one version of it.", required=True)
    flags.DEFINE_string("output", "-", "Where to write the tags ('-': stdout).")
    flags.DEFINE_enum("format", None, ["jsonl", "csv"], "Output format (default: from --output's suffix, else jsonl).")
    flags.DEFINE_integer("batch_size", 16, "Images per batch.")
    flags.DEFINE_string("annotate", None, "Also write each image with its tags drawn beside it to this folder.")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
