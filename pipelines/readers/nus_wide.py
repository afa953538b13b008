"""NUS-WIDE in its official distribution layout, with the paper's zero-shot protocol.

Layout under the dataset root (as distributed by NUS, plus the downloaded images):
  ImageList/Imagelist.txt          every image, Windows paths such as
                                   C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg
  ImageList/TrainImagelist.txt     the train split (actor\\0001_2124494179.jpg), and
  ImageList/TestImagelist.txt      the test split, in the order of the label files
  NUS_WID_Tags/TagList1k.txt       the 1000 Flickr tags
  NUS_WID_Tags/AllTags1k.txt       one row of 1000 0/1 values per line of Imagelist.txt
  ConceptsList/Concepts81.txt      the 81 human-annotated concepts
  Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt
                                   one 0/1 per image of the split, in its list's order
  Flickr/<folder>/<file>.jpg       the images (the path after "Flickr\\" in Imagelist.txt)

Zero-shot protocol (Fast0Tag's, used by the paper): the 81 concepts are the unseen
tags, labelled by their human ground truth; the seen tags are the 925 Flickr tags
that are not concepts, labelled by the users' tags (AllTags1k). The vocabulary is
their union, 1006 tags, sorted (the official order). In the train split the unseen
columns are withheld (-1), so no unseen label reaches training.

Missing images, zero-byte files and copies of Flickr's "photo unavailable"
placeholder are skipped, counted and logged (pipelines/readers/image_files.py).
"""

import logging
import os

import numpy as np

from pipelines.readers.image_files import check_image_files
from pipelines.readers.manifest import LabeledImages
from pipelines.text import numbered_lines, read_lines

logger = logging.getLogger(__name__)

IMAGE_LIST = os.path.join("ImageList", "Imagelist.txt")
SPLIT_LISTS = {
    "train": os.path.join("ImageList", "TrainImagelist.txt"),
    "test": os.path.join("ImageList", "TestImagelist.txt"),
}
TAG_LIST = os.path.join("NUS_WID_Tags", "TagList1k.txt")
TAG_MATRIX = os.path.join("NUS_WID_Tags", "AllTags1k.txt")
CONCEPTS = os.path.join("ConceptsList", "Concepts81.txt")
GROUND_TRUTH = os.path.join("Groundtruth", "TrainTestLabels", "Labels_{concept}_{split}.txt")
IMAGES = "Flickr"


def _layout_file(root, relative):
    path = os.path.join(root, relative)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: expected NUS-WIDE's official layout under {root} "
            "(see pipelines/readers/nus_wide.py)."
        )
    return path


def image_key(entry):
    """'C:\\ImageData\\Flickr\\actor\\0001_2.jpg' or 'actor\\0001_2.jpg' -> 'actor/0001_2.jpg':
    the path below the Flickr folder, which names each image in every list file."""
    parts = [p for p in entry.strip().replace("\\", "/").split("/") if p]
    if IMAGES in parts:
        parts = parts[len(parts) - parts[::-1].index(IMAGES):]
    return "/".join(parts[-2:])


def _binary_values(path, data, per_line, expected, line_offset=1):
    """`expected` 0/1 values from text with `per_line` whitespace-separated values on each
    non-blank line; errors name the file and line."""
    array = np.frombuffer(data, dtype=np.uint8)
    is_space = array <= 32  # space, tab, CR, LF
    values = array[~is_space]
    # A token starts at a non-space byte preceded by a space (or the start).
    starts = np.count_nonzero(~is_space[1:] & is_space[:-1]) + int(array.size > 0 and not is_space[0])
    if values.size == expected and starts == expected and ((values == 48) | (values == 49)).all():
        return (values - 48).astype(np.uint8)
    for line_no, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=line_offset):
        tokens = line.split()
        bad = [t for t in tokens if t not in ("0", "1")]
        if bad:
            raise ValueError(f"{path}:{line_no}: expected 0/1 values, found {bad[0]!r}.")
        if tokens and len(tokens) != per_line:
            raise ValueError(f"{path}:{line_no}: expected {per_line} values, found {len(tokens)}.")
    raise ValueError(f"{path}: expected {expected} 0/1 values, found {starts}.")


def _read_tag_matrix(path, position, width):
    """AllTags1k rows as (len(position), width) uint8: row r goes to `position[r]`.
    Returns it and the file's number of rows."""
    out = np.zeros((len(position), width), dtype=np.uint8)
    count = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            k = position.get(count)
            if k is not None:
                out[k] = _binary_values(path, line, width, width, line_offset=line_no)
            count += 1
    return out, count


def _ground_truth(root, concept, split, expected):
    path = _layout_file(root, GROUND_TRUTH.format(concept=concept, split=split.capitalize()))
    with open(path, "rb") as f:
        data = f.read()
    lines = sum(1 for line in data.splitlines() if line.strip())
    if lines != expected:
        raise ValueError(
            f"{path}: {lines} labels for the {expected} images of {SPLIT_LISTS[split]}; "
            "the label files must follow the split list line by line."
        )
    return _binary_values(path, data, 1, expected)


def zero_shot_vocabulary(root):
    """(tags, unseen_tags) of the paper's protocol from the dataset's own lists: tags are
    the sorted union of the Flickr tags and the concepts (1006 in the official data), and
    the unseen tags the concepts (81), in Concepts81.txt order."""
    flickr = read_lines(_layout_file(root, TAG_LIST))
    concepts = read_lines(_layout_file(root, CONCEPTS))
    return sorted(set(flickr) | set(concepts)), concepts


def read_nus_wide(root, split, tags, unseen_tags=None, images_dir=None, detect_placeholders=True):
    """One split of NUS-WIDE with labels over `tags`.

    Args:
        root: the dataset root in the official layout (module docstring).
        split: "train" or "test".
        tags: label columns; each a concept (ground-truth labels) or a Flickr tag
            (users' tags). Any other name is an error listing them all.
        unseen_tags: tags withheld in the train split (-1); default: the concepts.
        images_dir: where the images are; default ROOT/Flickr.
        detect_placeholders: skip copies of Flickr's "photo unavailable" image.

    Returns:
        (LabeledImages, ImageFileReport of the skipped images).
    """
    if split not in SPLIT_LISTS:
        raise ValueError(f"NUS-WIDE has splits {sorted(SPLIT_LISTS)}, not {split!r}.")
    flickr = read_lines(_layout_file(root, TAG_LIST))
    concepts = set(read_lines(_layout_file(root, CONCEPTS)))
    flickr_index = {t: i for i, t in enumerate(flickr)}
    unknown = [t for t in tags if t not in flickr_index and t not in concepts]
    if unknown:
        raise KeyError(
            f"{len(unknown)} tag(s) are neither NUS-WIDE concepts ({CONCEPTS}) nor Flickr tags "
            f"({TAG_LIST}) under {root}: {unknown[:20]}"
        )

    image_list = _layout_file(root, IMAGE_LIST)
    listed = [image_key(entry) for _, entry in numbered_lines(image_list)]
    row_of = {}
    for row, key in enumerate(listed):
        row_of.setdefault(key, row)
    split_list = _layout_file(root, SPLIT_LISTS[split])
    keys, position = [], {}
    for line_no, entry in numbered_lines(split_list):
        key = image_key(entry)
        if key not in row_of:
            raise ValueError(f"{split_list}:{line_no}: {entry!r} is not in {image_list}.")
        if row_of[key] in position:
            raise ValueError(f"{split_list}:{line_no}: {entry!r} is listed twice.")
        position[row_of[key]] = len(keys)
        keys.append(key)

    matrix_path = _layout_file(root, TAG_MATRIX)
    matrix, matrix_rows = _read_tag_matrix(matrix_path, position, len(flickr))
    if matrix_rows != len(listed):
        raise ValueError(f"{matrix_path}: {matrix_rows} rows, but {image_list} lists {len(listed)} images.")

    withheld = set(concepts if unseen_tags is None else unseen_tags) if split == "train" else set()
    labels = np.zeros((len(keys), len(tags)), dtype=np.float32)
    for column, tag in enumerate(tags):
        if tag in withheld:
            labels[:, column] = -1.0
        elif tag in concepts:
            labels[:, column] = _ground_truth(root, tag, split, len(keys))
        else:
            labels[:, column] = matrix[:, flickr_index[tag]]

    folder = images_dir or os.path.join(root, IMAGES)
    paths = [os.path.join(folder, *key.split("/")) for key in keys]
    report = check_image_files(paths, detect_placeholders=detect_placeholders)
    keep = report.keep
    images = LabeledImages([paths[i] for i in keep], [keys[i] for i in keep], labels[keep])
    return images, report


def read_split(source, split, tags, unseen_tags=()):
    """The `pipelines.readers` reader: `source` is the dataset root."""
    images, report = read_nus_wide(source, split, tags, unseen_tags=list(unseen_tags) or None)
    (logger.warning if report.skipped else logger.info)("%s", report.summary(f"NUS-WIDE {split}"))
    return images
