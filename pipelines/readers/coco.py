"""MS-COCO 2014 from its instances JSON, with the 48/17 zero-shot split of Bansal et al.

Layout (COCO's own): ROOT/annotations/instances_{train,val}2014.json and the images
in ROOT/train2014/, ROOT/val2014/ (the folder named after the JSON file).

The split file is JSON {"seen": [48 names], "unseen": [17 names]}, names as in the
instances file's categories. The other 15 COCO classes are in neither list: their
objects are ignored (they neither select nor exclude an image), and they are not
label columns unless the vocabulary names them.

Which images each split keeps (labels are 1 for a class with an object in the image,
0 otherwise; images are taken from the instances file given for the split):
  train: at least one object of a seen class and none of an unseen class. On
         train2014 these are the paper's 44,154 images (its 73,774 are the images
         with at least one seen object, before the ones with unseen objects are
         removed).
  test:  at least one object of a seen class and at least one of an unseen class
         ("images containing both seen and unseen objects"), from val2014. The
         paper's 6,608 test images are Bansal et al.'s list, a subset of these;
         pass its ids as `image_ids` to use exactly that list (the CLI's
         --test_image_ids: a file of ids, one per line).

The official code instead reads COCO-format files already restricted to one test set,
in the standard instances layout: `val_17_48.json` (GZSL: the split's images, the 65
classes' objects) and `val_unseen.json` (ZSL: the unseen classes' objects). With
`test_files="restricted"` the test split is every image such a file annotates (the
official `CocoDetection` takes `imgToAnns`' images), labelled by its annotations;
`sdl_keras.evaluate` takes GZSL from the one (--test_source) and ZSL from the other
(--zsl_test_source), as the official `validate_multi` does.
"""

import json
import logging
import os
import re

import numpy as np

from pipelines.readers.image_files import check_image_files
from pipelines.readers.manifest import LabeledImages

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
# How a test file's images are chosen: by the zero-shot rule (a full instances file), or
# every annotated image (a file already restricted to the test set, as the official code's).
TEST_FILES = ("instances", "restricted")


def normalize_name(name):
    """'Teddy_Bear' and 'teddy bear' name the same class."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def read_zero_shot_split(path):
    """(seen, unseen) class names from a {"seen": [...], "unseen": [...]} JSON file."""
    with open(path, encoding="utf-8") as f:
        try:
            split = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    if not isinstance(split, dict) or not {"seen", "unseen"} <= set(split):
        raise KeyError(f"{path}: expected an object with 'seen' and 'unseen' lists.")
    seen, unseen = [str(n) for n in split["seen"]], [str(n) for n in split["unseen"]]
    both = sorted(set(map(normalize_name, seen)) & set(map(normalize_name, unseen)))
    if both:
        raise ValueError(f"{path}: classes both seen and unseen: {both}")
    return seen, unseen


def zero_shot_vocabulary(split_path, class_names=None):
    """(tags, unseen_tags) for the split file: seen then unseen tags, or, given COCO's
    class names in category order, the split's classes in that order."""
    seen, unseen = read_zero_shot_split(split_path)
    tags = seen + unseen
    if class_names is not None:
        rank = {normalize_name(n): i for i, n in enumerate(class_names)}
        missing = [t for t in tags if normalize_name(t) not in rank]
        if missing:
            raise KeyError(f"{split_path}: classes not among the {len(class_names)} class names: {missing}")
        tags = sorted(tags, key=lambda t: rank[normalize_name(t)])
    return tags, unseen


def default_images_dir(annotations, file_name=None):
    """ROOT/annotations/instances_train2014.json -> ROOT/train2014; a file with another name
    (the official val_17_48.json) -> the folder its images' COCO names give
    ("COCO_val2014_000000000042.jpg" -> ROOT/val2014), else ROOT/<its name>."""
    stem = os.path.splitext(os.path.basename(annotations))[0]
    name = stem.split("_", 1)[1] if stem.startswith("instances_") else stem
    match = None if stem.startswith("instances_") else re.fullmatch(r"COCO_([A-Za-z]+\d*)_\d+\.\w+", file_name or "")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(annotations))), match[1] if match else name)


def _load_instances(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"COCO instances file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise KeyError(f"{path}: not a COCO instances file, no {key!r} key.")
    return data


def read_coco(annotations, split, tags, unseen_tags, images_dir=None, image_ids=None, test_files="instances"):
    """One split of COCO with labels over `tags` (see the module docstring for the rules).

    Args:
        annotations: an instances_*.json file.
        split: "train" or "test".
        tags: label columns, COCO class names (matched ignoring case and '_').
        unseen_tags: the unseen classes; the seen ones are the other `tags`.
        images_dir: default: the folder named after the JSON file, beside annotations/.
        image_ids: if given, only these image ids are considered.
        test_files: "instances" (test images by the zero-shot rule) or "restricted" (the
            test split is every image the file annotates: val_17_48.json, val_unseen.json).

    Returns:
        (LabeledImages, ImageFileReport of the skipped images).
    """
    if split not in SPLITS:
        raise ValueError(f"COCO has splits {SPLITS}, not {split!r}.")
    if test_files not in TEST_FILES:
        raise ValueError(f"COCO test_files must be one of {TEST_FILES}, got {test_files!r}.")
    every_annotated = split == "test" and test_files == "restricted"
    if not unseen_tags:
        raise ValueError(
            "COCO's splits are defined by the unseen classes (training keeps images without "
            "unseen objects): pass unseen_tags (the train CLI's --unseen_tags)."
        )
    data = _load_instances(annotations)
    category = {}
    for entry in data["categories"]:
        category[normalize_name(entry["name"])] = int(entry["id"])
    unknown = [t for t in list(tags) + list(unseen_tags) if normalize_name(t) not in category]
    if unknown:
        raise KeyError(
            f"{annotations}: {len(unknown)} tag(s) are not COCO categories: {unknown}; "
            f"the categories are {sorted(category)}"
        )
    not_tags = sorted(set(map(normalize_name, unseen_tags)) - set(map(normalize_name, tags)))
    if not_tags:
        raise KeyError(f"Unseen tags that are not among the tags: {not_tags}")
    column = {category[normalize_name(t)]: c for c, t in enumerate(tags)}
    unseen_ids = {category[normalize_name(t)] for t in unseen_tags}
    seen_ids = set(column) - unseen_ids

    present = {}
    for k, entry in enumerate(data["annotations"]):
        try:
            present.setdefault(int(entry["image_id"]), set()).add(int(entry["category_id"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{annotations}: annotation #{k} lacks an integer image_id or category_id: {entry}"
            ) from None
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    first = data["images"][0]["file_name"] if data["images"] else None
    folder = images_dir or default_images_dir(annotations, first)
    paths, ids, rows = [], [], []
    for entry in sorted(data["images"], key=lambda e: int(e["id"])):
        image_id = int(entry["id"])
        if wanted is not None and image_id not in wanted:
            continue
        if every_annotated:
            if image_id not in present:
                continue
        else:
            classes = present.get(image_id, set())
            has_seen, has_unseen = bool(classes & seen_ids), bool(classes & unseen_ids)
            if not has_seen or has_unseen != (split == "test"):
                continue
        classes = present.get(image_id, set())
        row = np.zeros(len(tags), dtype=np.float32)
        row[[column[c] for c in classes if c in column]] = 1.0
        paths.append(os.path.join(folder, entry["file_name"]))
        ids.append(str(image_id))
        rows.append(row)
    labels = np.stack(rows) if rows else np.zeros((0, len(tags)), np.float32)
    report = check_image_files(paths)
    keep = report.keep
    return LabeledImages([paths[i] for i in keep], [ids[i] for i in keep], labels[keep]), report


def read_split(source, split, tags, unseen_tags=(), test_files="instances"):
    """The `pipelines.readers` reader: `source` is the split's instances JSON (or, with
    `test_files="restricted"`, an official test file such as val_17_48.json)."""
    images, report = read_coco(source, split, tags, list(unseen_tags), test_files=test_files)
    (logger.warning if report.skipped else logger.info)("%s", report.summary(f"COCO {split}"))
    return images
