"""The generic manifest: image files with their tags, for the demo and users' own images.

Two encodings, chosen by suffix:
- JSON Lines (.jsonl): one object per line,
    {"image": "images/0001.png", "tags": ["red circle", "blue square"]}
  optionally with "id" (default: the image path) and "negative_tags".
- CSV (.csv): a header with columns `image` and `tags` (optionally `id`,
  `negative_tags`); several tags in one cell are separated by "|".
Relative image paths are relative to the manifest's folder.

Labels over a vocabulary of C tags: 1 for a listed tag, 0 otherwise. A record that
has a "negative_tags" field is partially annotated: its listed negatives are 0 and
every other tag is unknown (-1).

Every problem is an error naming the file and line: text that is not UTF-8, a malformed
record, a tag outside the vocabulary (or, with on_unknown="skip", a warning), and an image
id on more than one line (ids name images in the retrieval index and the tagging output,
so they must be unique).
"""

import csv
import dataclasses
import json
import logging
import os

import numpy as np

from pipelines.text import lines_listing, repeated_lines, text_lines

logger = logging.getLogger(__name__)

TAG_SEPARATOR = "|"


@dataclasses.dataclass
class LabeledImages:
    """Image paths, ids and (N, C) float32 labels in {1, 0, -1} over a tag list."""

    paths: list
    ids: list
    labels: np.ndarray

    def __len__(self):
        return len(self.paths)


def _split_tags(cell):
    return [t.strip() for t in (cell or "").split(TAG_SEPARATOR) if t.strip()]


def _read_records(path):
    """(line number, record dict) pairs from a .jsonl or .csv manifest."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        for line_no, line in text_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}.")
            yield line_no, record
    elif suffix == ".csv":
        reader = csv.DictReader(line for _, line in text_lines(path))
        missing = {"image", "tags"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the CSV header lacks column(s) {sorted(missing)}.")
        for row in reader:
            record = {"image": row["image"], "tags": _split_tags(row["tags"])}
            if row.get("id"):
                record["id"] = row["id"]
            if row.get("negative_tags") is not None and "negative_tags" in reader.fieldnames:
                record["negative_tags"] = _split_tags(row["negative_tags"])
            yield reader.line_num, record
    else:
        raise ValueError(f"{path}: a manifest must be .jsonl or .csv, got {suffix!r}.")


def read_manifest(path, tags, on_unknown="error"):
    """Reads a manifest into labels over `tags`.

    Args:
        path: the .jsonl or .csv manifest.
        tags: the vocabulary's tag names (label columns, in order).
        on_unknown: "error" raises, listing every tag name not in `tags` with the
            lines it is on; "skip" leaves them out and logs the same listing.

    Returns:
        LabeledImages.
    """
    if on_unknown not in ("error", "skip"):
        raise ValueError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Manifest not found: {path}")
    index = {t: i for i, t in enumerate(tags)}
    base = os.path.dirname(os.path.abspath(path))
    paths, ids, rows, unknown, id_lines = [], [], [], {}, []
    for line_no, record in _read_records(path):
        if "image" not in record or "tags" not in record:
            raise ValueError(f"{path}:{line_no}: a record needs 'image' and 'tags' keys, got {sorted(record)}.")
        image = str(record["image"])
        row = np.zeros(len(tags), dtype=np.float32)
        if "negative_tags" in record:
            row[:] = -1.0
            for tag in record["negative_tags"]:
                if tag in index:
                    row[index[tag]] = 0.0
                else:
                    unknown.setdefault(tag, []).append(line_no)
        for tag in record["tags"]:
            if tag in index:
                row[index[tag]] = 1.0
            else:
                unknown.setdefault(tag, []).append(line_no)
        paths.append(image if os.path.isabs(image) else os.path.join(base, image))
        ids.append(str(record.get("id", image)))
        id_lines.append((line_no, ids[-1]))
        rows.append(row)
    repeated = repeated_lines(id_lines)
    if repeated:
        raise ValueError(
            f"{path}: {len(repeated)} image id(s) on more than one line: {lines_listing(repeated)}. Ids must be unique: "
            "give each record its own \"id\"."
        )
    if unknown:
        message = f"{path}: {len(unknown)} tag name(s) not in the vocabulary: {lines_listing(unknown)}"
        if on_unknown == "error":
            raise KeyError(message)
        logger.warning("%s. They were left out.", message)
    labels = np.stack(rows) if rows else np.zeros((0, len(tags)), np.float32)
    return LabeledImages(paths, ids, labels)


def write_manifest(path, records):
    """Writes (image, tags) pairs or dicts as a .jsonl or .csv manifest."""
    records = [r if isinstance(r, dict) else {"image": r[0], "tags": list(r[1])} for r in records]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    elif path.endswith(".csv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "tags"])
            for record in records:
                writer.writerow([record["image"], TAG_SEPARATOR.join(record["tags"])])
    else:
        raise ValueError(f"{path}: a manifest must be .jsonl or .csv.")
