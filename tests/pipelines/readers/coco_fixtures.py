"""A tiny COCO 2014 val set in COCO's own formats, for the two ways of restricting the test
set: the full instances file (with a file of image ids) and the official restricted files
`val_17_48.json` (GZSL) and `val_unseen.json` (ZSL), with real, decodable JPEGs."""

import json
import os

import numpy as np

# Three seen, two unseen classes of the real 48/17 split, and one class outside it.
SEEN, UNSEEN, OTHER = ["person", "car", "bowl"], ["dog", "cup"], "traffic light"
CLASSES = ["person", "car", "traffic light", "dog", "bowl", "cup"]  # category order (ids 1, 3, 10, 18, 51, 47)
CATEGORY_IDS = {"person": 1, "car": 3, "traffic light": 10, "dog": 18, "cup": 47, "bowl": 51}
# image id -> its objects in val2014.
OBJECTS = {
    11: ["person", "dog"],  # seen + unseen: a test image
    12: ["car", "cup", "traffic light"],
    13: ["person"],  # seen only: not a test image by the rule
    14: ["dog", "cup"],  # unseen only: not a test image by the rule, but annotated in val_unseen.json
    15: ["bowl", "dog", "dog"],
    16: ["traffic light"],
}


def _jpeg(path, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path, "JPEG")


# image id -> its objects in train2014: seen objects only but 26 (with an unseen dog), 27 (none).
TRAIN_OBJECTS = {21: ["person"], 22: ["car", "person"], 23: ["bowl"], 24: ["person", "traffic light"],
                 25: ["car"], 26: ["person", "dog"], 27: [], 28: ["bowl", "car"], 29: ["person", "bowl"]}


def _instances(images, keep_classes, objects=OBJECTS, folder="val2014"):
    return {
        "info": {"description": "fixture"},
        "images": [{"id": i, "file_name": f"COCO_{folder}_{i:012d}.jpg", "width": 32, "height": 24} for i in images],
        "annotations": [
            {"id": 100 * i + k, "image_id": i, "category_id": CATEGORY_IDS[c], "bbox": [0, 0, 4, 4], "area": 16.0,
             "iscrowd": 0}
            for i in images for k, c in enumerate(objects[i]) if c in keep_classes
        ],
        "categories": [{"id": CATEGORY_IDS[c], "name": c, "supercategory": "x"} for c in CLASSES],
    }


def write_coco_val(root):
    """ROOT/val2014/*.jpg and ROOT/annotations/{instances_val2014, val_17_48, val_unseen}.json.

    The restricted files are made as the official ones are described: the split's test
    images (here the rule's: 11, 12, 15) with the split's classes' objects for GZSL, and
    the images with an unseen object (11, 12, 14, 15) with only those objects for ZSL.
    Returns {name: path} and the tags (seen + unseen, category order)."""
    os.makedirs(os.path.join(root, "val2014"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for i in OBJECTS:
        _jpeg(os.path.join(root, "val2014", f"COCO_val2014_{i:012d}.jpg"), seed=i)
    files = {
        "instances": _instances(sorted(OBJECTS), set(CLASSES)),
        "val_17_48": _instances([11, 12, 15], set(SEEN + UNSEEN)),
        "val_unseen": _instances([11, 12, 14, 15], set(UNSEEN)),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = os.path.join(root, "annotations", "instances_val2014.json" if name == "instances" else
                                   f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump(data, f)
    tags = [c for c in CLASSES if c in SEEN + UNSEEN]
    return paths, tags


def write_coco_data_dir(data_dir, dim=8):
    """DATA_DIR/coco laid out as configs/coco.flags names it under /path/to: train2014 and
    val2014 images and annotations (the official restricted test files), lists/tags.txt and
    unseen_tags.txt (the split's tags in category order), classes.txt and word_vectors.npy
    (one random row per class, as the official 80-row vectors). Returns the val files' paths."""
    root = os.path.join(data_dir, "coco")
    paths, tags = write_coco_val(root)
    os.makedirs(os.path.join(root, "train2014"), exist_ok=True)
    for i in TRAIN_OBJECTS:
        _jpeg(os.path.join(root, "train2014", f"COCO_train2014_{i:012d}.jpg"), seed=i)
    with open(os.path.join(root, "annotations", "instances_train2014.json"), "w") as f:
        json.dump(_instances(sorted(TRAIN_OBJECTS), set(CLASSES), TRAIN_OBJECTS, "train2014"), f)
    os.makedirs(os.path.join(root, "lists"), exist_ok=True)
    for name, lines in (("lists/tags.txt", tags), ("lists/unseen_tags.txt", UNSEEN), ("classes.txt", CLASSES)):
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    np.save(os.path.join(root, "word_vectors.npy"),
            np.random.default_rng(5).standard_normal((len(CLASSES), dim)).astype("float32"))
    return paths
