"""Open Images V4 human-verified image-level labels, with the paper's 7186/400 split.

Files (Open Images V4, 2018_04, and the zero-shot lists of LESA/ZS-SDL), in one
`classes_dir`:
  classes-trainable.txt    the 7,186 trainable class MIDs: the seen classes
  class-descriptions.csv   MID,name for every class (no header)
  unseen_400_mids.txt      the 400 unseen class MIDs, or, to resolve them:
  top_400_unseen.csv       400 indices (UTF-8 BOM, CRLF) into
  unseen_labels.pkl        a pickled numpy array of test-only MIDs (a pickle runs
                           code when loaded: read only with allow_pickle=True)
Labels: {train,validation,test}-annotations-human-imagelabels.csv with the header
ImageID,Source,LabelName,Confidence; images in a folder named after the split
beside the CSV (train/<ImageID>.jpg).

Open Images is partially annotated: a human verified some classes per image, as
present (Confidence 1 -> label 1) or absent (Confidence 0 -> label 0); every other
class is unknown (-1) and the loss must treat it so. Where an image has both values
for a class (two verification sources), the positive wins. Tags are MIDs: the names
are not unique (109 names are shared by several of the 7,586 classes); the names are
what word vectors are looked up by (`class_names`). Images with no verified label
among the tags are left out.

Labels are held sparse (`SparseRows`): the 9-million-image train split as a dense
(N, 7586) float32 matrix would take 270 GB. Convert it to TFRecords
(python -m pipelines.to_tfrecord), which streams one row at a time.
"""

import array
import collections
import csv
import logging
import os

import numpy as np

from pipelines.readers.image_files import check_image_files
from pipelines.readers.manifest import LabeledImages
from pipelines.text import read_lines

logger = logging.getLogger(__name__)

TRAINABLE = "classes-trainable.txt"
DESCRIPTIONS = "class-descriptions.csv"
UNSEEN_MIDS = "unseen_400_mids.txt"
UNSEEN_INDICES = "top_400_unseen.csv"
UNSEEN_PICKLE = "unseen_labels.pkl"
COLUMNS = ("ImageID", "LabelName", "Confidence")
_CONFIDENCE = {"1": 1, "0": 0, "1.0": 1, "0.0": 0}
# A dense label matrix larger than this is refused with advice to convert to TFRecords.
MAX_DENSE_BYTES = 8 << 30


def _classes_file(classes_dir, name):
    path = os.path.join(classes_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (Open Images class lists: see pipelines/readers/open_images.py).")
    return path


def _unseen_from_pickle(classes_dir):
    indices_path = _classes_file(classes_dir, UNSEEN_INDICES)
    pickle_path = _classes_file(classes_dir, UNSEEN_PICKLE)
    # np.load reads a plain pickle only with allow_pickle; the caller has opted in.
    mids = np.load(pickle_path, allow_pickle=True)
    mids = [str(m) for m in np.asarray(mids).reshape(-1)]
    unseen = []
    with open(indices_path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            cell = line.strip().split(",")[0].strip()
            if not cell:
                continue
            try:
                index = int(cell)
            except ValueError:
                raise ValueError(f"{indices_path}:{line_no}: {cell!r} is not an integer index.") from None
            if not 0 <= index < len(mids):
                raise IndexError(
                    f"{indices_path}:{line_no}: index {index} is outside {pickle_path} ({len(mids)} MIDs)."
                )
            unseen.append(mids[index])
    return unseen


def zero_shot_vocabulary(classes_dir, allow_pickle=False):
    """(tags, unseen_tags) as MIDs: the 7,186 trainable classes, then the 400 unseen ones.

    The unseen MIDs come from unseen_400_mids.txt; with `allow_pickle=True` they are
    resolved from top_400_unseen.csv and unseen_labels.pkl instead (and checked against
    unseen_400_mids.txt where both exist).
    """
    seen = read_lines(_classes_file(classes_dir, TRAINABLE))
    mids_path = os.path.join(classes_dir, UNSEEN_MIDS)
    if allow_pickle:
        unseen = _unseen_from_pickle(classes_dir)
        if os.path.exists(mids_path) and read_lines(mids_path) != unseen:
            raise ValueError(f"{mids_path} disagrees with the MIDs resolved from {UNSEEN_INDICES} and {UNSEEN_PICKLE}.")
    elif os.path.exists(mids_path):
        unseen = read_lines(mids_path)
    else:
        raise FileNotFoundError(
            f"{mids_path} not found. The unseen classes can be resolved from {UNSEEN_INDICES} and "
            f"{UNSEEN_PICKLE}, a pickle, which runs code when loaded: pass allow_pickle=True "
            "(--allow_pickle) only for a file you trust."
        )
    for name, mids in ((TRAINABLE, seen), ("the unseen classes", unseen)):
        repeated = sorted(m for m, n in collections.Counter(mids).items() if n > 1)
        if repeated:
            raise ValueError(f"{name}: repeated MIDs {repeated[:10]}")
    overlap = sorted(set(seen) & set(unseen))
    if overlap:
        raise ValueError(f"Unseen classes that are also trainable ({TRAINABLE}): {overlap[:10]}")
    return seen + unseen, unseen


def class_names(classes_dir, mids):
    """The names of `mids` from class-descriptions.csv (for looking up word vectors)."""
    path = _classes_file(classes_dir, DESCRIPTIONS)
    names = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line_no}: expected MID,name, got {row}.")
            names[row[0].strip()] = row[1].strip()
    missing = [m for m in mids if m not in names]
    if missing:
        raise KeyError(f"{path}: no name for {len(missing)} MID(s): {missing[:10]}")
    return [names[m] for m in mids]


class SparseRows:
    """Label rows held sparse: row i is -1 except at `columns[offsets[i]:offsets[i+1]]`,
    which hold `values` (1 or 0). Indexing gives a dense (C,) float32 row; `shape` is
    (N, C), so converters treat it like a label matrix."""

    def __init__(self, offsets, columns, values, num_classes):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.columns = np.asarray(columns, dtype=np.int32)
        self.values = np.asarray(values, dtype=np.float32)
        self.num_classes = int(num_classes)

    @property
    def shape(self):
        return (len(self.offsets) - 1, self.num_classes)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        row = np.full(self.num_classes, -1.0, dtype=np.float32)
        start, end = self.offsets[i], self.offsets[i + 1]
        row[self.columns[start:end]] = self.values[start:end]
        return row

    def select(self, indices):
        """The rows at `indices` (increasing), as SparseRows."""
        counts = np.diff(self.offsets)
        chosen = np.zeros(len(self), dtype=bool)
        chosen[indices] = True
        entries = np.repeat(chosen, counts)
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(counts[indices], out=offsets[1:])
        return SparseRows(offsets, self.columns[entries], self.values[entries], self.num_classes)

    def dense(self, max_bytes=MAX_DENSE_BYTES):
        size = len(self) * self.num_classes * 4
        if size > max_bytes:
            raise MemoryError(
                f"A dense label matrix of {len(self)} images x {self.num_classes} tags would take "
                f"{size / 2**30:.1f} GiB; convert this split to TFRecords (python -m pipelines.to_tfrecord) "
                "and train from the records."
            )
        out = np.full(self.shape, -1.0, dtype=np.float32)
        rows = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        out[rows, self.columns] = self.values
        return out


def default_images_dir(labels_csv):
    """.../train-annotations-human-imagelabels.csv -> .../train."""
    folder = os.path.dirname(os.path.abspath(labels_csv))
    return os.path.join(folder, os.path.basename(labels_csv).split("-")[0])


def read_labels(labels_csv, tags, withheld=()):
    """(image ids, SparseRows over `tags`) from a human-verified labels CSV.

    Rows of classes that are not tags are ignored (counted in the log); tags in
    `withheld` are left unknown (-1). Image order is first appearance in the file.
    """
    if not os.path.exists(labels_csv):
        raise FileNotFoundError(f"Open Images labels file not found: {labels_csv}")
    column = {t: c for c, t in enumerate(tags)}
    withheld = {column[t] for t in withheld if t in column}
    image_index, image_ids = {}, []
    entry_image, entry_column, entry_value = array.array("i"), array.array("i"), array.array("b")
    ignored = withheld_count = 0
    with open(labels_csv, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{labels_csv}:1: the header lacks column(s) {missing}; "
                "expected ImageID,Source,LabelName,Confidence."
            )
        at = [header.index(c) for c in COLUMNS]
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                image_id, mid, confidence = (row[k] for k in at)
            except IndexError:
                raise ValueError(f"{labels_csv}:{line_no}: expected {len(header)} fields, got {len(row)}.") from None
            value = _CONFIDENCE.get(confidence.strip())
            if value is None:
                raise ValueError(f"{labels_csv}:{line_no}: Confidence must be 0 or 1, got {confidence!r}.")
            c = column.get(mid)
            if c is None:
                ignored += 1
                continue
            if c in withheld:
                withheld_count += 1
                continue
            i = image_index.get(image_id)
            if i is None:
                i = image_index[image_id] = len(image_ids)
                image_ids.append(image_id)
            entry_image.append(i)
            entry_column.append(c)
            entry_value.append(value)
    images = np.frombuffer(entry_image, dtype=np.int32)
    columns = np.frombuffer(entry_column, dtype=np.int32)
    values = np.frombuffer(entry_value, dtype=np.int8)
    # Sort by (image, column, value) so a repeated (image, column) keeps its last entry,
    # the largest value: a positive wins over a negative.
    order = np.lexsort((values, columns, images))
    images, columns, values = images[order], columns[order], values[order]
    last = np.ones(len(images), dtype=bool)
    last[:-1] = (images[1:] != images[:-1]) | (columns[1:] != columns[:-1])
    images, columns, values = images[last], columns[last], values[last]
    offsets = np.zeros(len(image_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(images, minlength=len(image_ids)), out=offsets[1:])
    if ignored or withheld_count:
        logger.info(
            "%s: ignored %d label rows of classes outside the %d tags; withheld %d of unseen tags.",
            labels_csv, ignored, len(tags), withheld_count,
        )
    return image_ids, SparseRows(offsets, columns, values, len(tags))


def read_open_images(labels_csv, split, tags, unseen_tags=(), images_dir=None):
    """One split of Open Images with sparse labels over `tags` (MIDs).

    In the train split the columns of `unseen_tags` are withheld (-1).

    Returns:
        (LabeledImages whose `labels` are SparseRows, ImageFileReport of the skipped images).
    """
    bad = [t for t in tags if not t.startswith("/")]
    if bad:
        raise KeyError(
            f"Open Images tags are class MIDs such as /m/0100nhbf, got {bad[:10]}; names are not unique "
            "(see open_images.zero_shot_vocabulary and class_names)."
        )
    ids, rows = read_labels(labels_csv, tags, withheld=unseen_tags if split == "train" else ())
    folder = images_dir or default_images_dir(labels_csv)
    paths = [os.path.join(folder, f"{image_id}.jpg") for image_id in ids]
    report = check_image_files(paths)
    keep = report.keep
    if len(keep) < len(ids):
        rows = rows.select(keep)
    return LabeledImages([paths[i] for i in keep], [ids[i] for i in keep], rows), report


def read_split(source, split, tags, unseen_tags=()):
    """The `pipelines.readers` reader: `source` is the split's labels CSV. Labels come back
    dense, which suits the validation and test splits; the train split goes through TFRecords."""
    images, report = read_open_images(source, split, tags, unseen_tags)
    (logger.warning if report.skipped else logger.info)("%s", report.summary(f"Open Images {split}"))
    images.labels = images.labels.dense()
    return images
