"""Fixture datasets in the official layouts (NUS-WIDE, COCO, Open Images), written small,
and the word-vector files their flagfiles point at.

The reader tests (tests/pipelines/readers/) read them on the real vocabularies of ../shared;
the flows (tests/flows/) train on them with their own small vocabularies, so one writer
serves both and the layouts are written once.
"""

import csv
import json
import os
import zlib

import numpy as np

from tests import testing


def jpeg(seed, size=(12, 10)):
    """A small decodable JPEG (width, height), different for each seed."""
    return testing.encode_image(testing.smooth_image(size, seed=seed), "JPEG")


def write_word_vectors(path, words, dim=16, seed=0):
    """A FastText .vec text file ("count dim" header, then "word v1 ... vd") of random vectors."""
    rng = np.random.default_rng(seed)
    words = list(dict.fromkeys(words))
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{len(words)} {dim}\n")
        for word in words:
            f.write(word + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=dim)) + "\n")
    return path


# -- NUS-WIDE (pipelines/readers/nus_wide.py) -----------------------------------------------

PLACEHOLDER = b"GIF89a photo unavailable placeholder bytes"


def make_nus_wide(root, tags, unseen, num_train=14, num_test=4, seed=0, density=0.02, image_size=(12, 10)):
    """Writes a tiny NUS-WIDE in the official layout. Train images 0-9 are copies of one
    placeholder, image 10 is missing (as in the real download); the rest are real JPEGs.
    `density` is the fraction of users' tags set per image. Returns the tag matrix, the
    ground truth {(concept, split): column}, the Flickr tag list and the image names."""
    rng = np.random.default_rng(seed)
    seen = [t for t in tags if t not in unseen]
    # The real TagList1k holds 1000 tags: the 925 seen ones and 75 of the 81 concepts
    # (as many in proportion in a smaller vocabulary).
    flickr = list(rng.permutation(seen + unseen[: len(unseen) * 75 // 81]))
    folders = ("actor", "zebra", "sunset")
    names = [f"{folders[i % 3]}\\{i:04d}_{1000 + i}.jpg" for i in range(num_train + num_test)]
    train, test = names[:num_train], names[num_train:]
    for folder in ("ImageList", "NUS_WID_Tags", "ConceptsList", "Groundtruth/TrainTestLabels"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)

    def write(relative, lines, newline="\r\n"):
        with open(os.path.join(root, relative), "w", encoding="utf-8", newline="") as f:
            f.write(newline.join(lines) + newline)

    order = rng.permutation(len(names))  # Imagelist's order differs from the split lists'
    write("ImageList/Imagelist.txt", [f"C:\\ImageData\\Flickr\\{names[i]}" for i in order])
    write("ImageList/TrainImagelist.txt", train)
    write("ImageList/TestImagelist.txt", test)
    write("NUS_WID_Tags/TagList1k.txt", flickr, "\n")
    write("ConceptsList/Concepts81.txt", unseen)
    matrix = (rng.random((len(names), len(flickr))) < density).astype(int)
    write("NUS_WID_Tags/AllTags1k.txt", ["\t".join(map(str, matrix[i])) + "\t" for i in order])
    truth = {}
    for split, listed in (("Train", train), ("Test", test)):
        for concept in unseen:
            column = (rng.random(len(listed)) < 0.3).astype(int)
            truth[concept, split] = column
            write(f"Groundtruth/TrainTestLabels/Labels_{concept}_{split}.txt", [f"{v} " for v in column])
    for k, name in enumerate(names):
        path = nus_wide_image(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if k == 10:
            continue
        with open(path, "wb") as f:
            f.write(PLACEHOLDER if k < 10 else jpeg(k, image_size))
    return matrix, truth, flickr, names


def nus_wide_image(root, name):
    """The image file of a split-list entry ('actor\\0001_2.jpg')."""
    return os.path.join(root, "Flickr", *name.split("\\"))


def write_nus_wide_lists(folder, root, dim=16, seed=0):
    """What the ZS-SDL release gives beside the dataset: tags.txt (the official order),
    unseen_tags.txt and word_vectors.npy, whose row i is tag i's vector. Returns their paths."""
    from pipelines.readers import nus_wide

    tags, unseen = nus_wide.zero_shot_vocabulary(root)
    os.makedirs(folder, exist_ok=True)
    paths = {name: os.path.join(folder, name) for name in ("tags.txt", "unseen_tags.txt", "word_vectors.npy")}
    for name, lines in (("tags.txt", tags), ("unseen_tags.txt", unseen)):
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write("".join(f"{line}\n" for line in lines))
    np.save(paths["word_vectors.npy"], np.random.default_rng(seed).normal(size=(len(tags), dim)).astype(np.float32))
    return paths


# -- COCO (pipelines/readers/coco.py) ---------------------------------------------------------

# COCO's 80 classes in category order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def make_coco(root, classes, images, name="train2014", missing=(), image_size=(8, 8)):
    """annotations/instances_NAME.json and NAME/ images, with COCO's non-contiguous category
    ids. `images` maps image id -> the class names of its objects; the ids in `missing`
    are listed without a file. Returns the JSON file's path."""
    ids = {c: 1 + i + i // 10 for i, c in enumerate(classes)}
    annotations = [
        {"id": 100 * image + k, "image_id": image, "category_id": ids[c], "bbox": [0, 0, 1, 1]}
        for image, objects in images.items()
        for k, c in enumerate(objects)
    ]
    data = {
        "images": [{"id": i, "file_name": f"COCO_{name}_{i:012d}.jpg", "width": image_size[0],
                    "height": image_size[1]} for i in sorted(images, reverse=True)],
        "annotations": annotations,
        "categories": [{"id": ids[c], "name": c, "supercategory": "x"} for c in classes],
    }
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    path = os.path.join(root, "annotations", f"instances_{name}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    for i in images:
        if i not in missing:
            with open(os.path.join(root, name, f"COCO_{name}_{i:012d}.jpg"), "wb") as f:
                f.write(jpeg(i, image_size))
    return path


def restrict_coco(instances, path, image_ids, classes):
    """A COCO-format file restricted as the official test files are (val_17_48.json,
    val_unseen.json): the images `image_ids` and only the objects of `classes`."""
    with open(instances) as f:
        data = json.load(f)
    keep = {c["id"] for c in data["categories"] if c["name"] in set(classes)}
    data["images"] = [image for image in data["images"] if image["id"] in set(image_ids)]
    data["annotations"] = [a for a in data["annotations"]
                           if a["image_id"] in set(image_ids) and a["category_id"] in keep]
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def coco_objects(seen, unseen, others, count, first_id, split, seed=0):
    """{image id: class names} for `count` images of a split, by the reader's rule: "train"
    images hold seen objects and none unseen, "test" images both; objects of `others`
    (classes outside the split) are scattered over both."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(count):
        objects = list(rng.choice(seen, size=int(rng.integers(1, 4))))
        if split == "test":
            objects += list(rng.choice(unseen, size=int(rng.integers(1, 3))))
        if rng.random() < 0.3:
            objects.append(str(rng.choice(others)))
        images[first_id + i] = [str(c) for c in objects]
    return images


def write_zero_shot_split(path, seen, unseen):
    """A seen/unseen split JSON in the format of split_48_17.json."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"seen": list(seen), "unseen": list(unseen)}, f)
    return path


# -- Open Images (pipelines/readers/open_images.py) -------------------------------------------

HEADER = "ImageID,Source,LabelName,Confidence\n"


def write_labels(folder, split, rows, images=True, image_size=(12, 10)):
    """SPLIT-annotations-human-imagelabels.csv of (ImageID, LabelName, Confidence) rows, and
    the images it names in SPLIT/."""
    os.makedirs(os.path.join(folder, split), exist_ok=True)
    path = os.path.join(folder, f"{split}-annotations-human-imagelabels.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + "".join(f"{i},verification,{m},{c}\n" for i, m, c in rows))
    if images:
        for image_id in {r[0] for r in rows}:
            with open(os.path.join(folder, split, f"{image_id}.jpg"), "wb") as f:
                f.write(jpeg(zlib.crc32(image_id.encode()), image_size))
    return path


def write_open_images_classes(classes_dir, seen, unseen, names):
    """classes-trainable.txt (the seen MIDs), unseen_400_mids.txt and class-descriptions.csv
    (MID,name for every class, no header), as the class lists are distributed."""
    os.makedirs(classes_dir, exist_ok=True)
    for name, mids in (("classes-trainable.txt", seen), ("unseen_400_mids.txt", unseen)):
        with open(os.path.join(classes_dir, name), "w", encoding="utf-8") as f:
            f.write("".join(f"{m}\n" for m in mids))
    with open(os.path.join(classes_dir, "class-descriptions.csv"), "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(zip(list(seen) + list(unseen), names))
    return classes_dir


def open_images_rows(image_ids, classes, verified=4, seed=0):
    """Human-verification rows: each image has `verified` of `classes` checked, each present
    (1) or absent (0), at least one present; every other class stays unannotated."""
    rng = np.random.default_rng(seed)
    rows = []
    for image_id in image_ids:
        checked = rng.choice(classes, size=verified, replace=False)
        confidence = rng.integers(0, 2, size=verified)
        confidence[0] = 1
        rows += [(image_id, str(m), int(c)) for m, c in zip(checked, confidence)]
    return rows
