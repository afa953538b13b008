"""Dataset readers by name, so one flag picks the data a run trains and evaluates on.

A reader is `fn(source, split, tags, unseen_tags=(), **options) -> LabeledImages`:
`source` is what the dataset is read from (a manifest file, or a dataset's root
folder), `split` "train" or "test", `tags` the vocabulary's tag names, which fix the
label columns, and `unseen_tags` the zero-shot tags, which some datasets' splits
depend on (COCO's training images are those without unseen objects). `options` are a
reader's own (COCO's `test_files`).
"""

import inspect

from pipelines.readers import coco, nus_wide, open_images
from pipelines.readers.manifest import LabeledImages, read_manifest
from pipelines.text import read_lines

# The name `--dataset` takes for TFRecord shards (pipelines.tfrecord.records), streamed
# from their shards instead of read by a reader.
TFRECORD = "tfrecord"


def _manifest(source, split, tags, unseen_tags=()):
    del split, unseen_tags  # one manifest file is one split
    return read_manifest(source, tags)


READERS = {
    "manifest": _manifest,
    "nus_wide": nus_wide.read_split,
    "coco": coco.read_split,
    "open_images": open_images.read_split,
}


def select_images(images, image_ids, source="image ids"):
    """The images of `images` whose ids are in `image_ids` (a file of ids, one per line, or
    a list), in their order; an id the split lacks is an error naming it."""
    if isinstance(image_ids, str):
        source, image_ids = image_ids, read_lines(image_ids)
    wanted = [str(i) for i in image_ids]
    position = {image_id: i for i, image_id in enumerate(images.ids)}
    missing = [i for i in wanted if i not in position]
    if missing:
        raise KeyError(
            f"{source}: {len(missing)} of its {len(wanted)} image ids are not among the split's "
            f"{len(images)} images: {missing[:10]}"
        )
    keep = sorted({position[i] for i in wanted})
    return LabeledImages([images.paths[i] for i in keep], [images.ids[i] for i in keep], images.labels[keep])


def load_split(dataset, source, split, tags, unseen_tags=(), image_ids=None, **options):
    """LabeledImages of one split of a registered dataset, labels over `tags`; with
    `image_ids` (`select_images`), only those images; `options` go to the reader."""
    if dataset == TFRECORD:
        raise ValueError(
            "dataset 'tfrecord' is streamed from its shards, never loaded whole: read it with "
            "pipelines.tfrecord.records (as sdl_keras.train and sdl_keras.evaluate do)."
        )
    if dataset not in READERS:
        raise ValueError(f"Unknown dataset {dataset!r}; available: {sorted(READERS)}.")
    reader = READERS[dataset]
    unknown = sorted(set(options) - set(inspect.signature(reader).parameters))
    if unknown:
        raise ValueError(f"The {dataset} reader takes no option {unknown}.")
    images = reader(source, split, list(tags), unseen_tags=list(unseen_tags), **options)
    return images if image_ids is None else select_images(images, image_ids)


def dataset_vocabulary(dataset, source, zero_shot_split="", classes_dir="", allow_pickle=False):
    """(tags, unseen_tags) of a dataset's zero-shot protocol: NUS-WIDE's from the dataset
    root, COCO's from its seen/unseen split file, Open Images' from its class lists."""
    if dataset == "nus_wide":
        return nus_wide.zero_shot_vocabulary(source)
    if dataset == "coco":
        if not zero_shot_split:
            raise ValueError("COCO's vocabulary comes from its seen/unseen split file: pass --zero_shot_split.")
        return coco.zero_shot_vocabulary(zero_shot_split)
    if dataset == "open_images":
        if not classes_dir:
            raise ValueError("Open Images' vocabulary comes from its class lists: pass --classes_dir.")
        return open_images.zero_shot_vocabulary(classes_dir, allow_pickle=allow_pickle)
    raise ValueError(f"{dataset!r} has no built-in vocabulary: pass --tags (and --unseen_tags).")


__all__ = ["READERS", "TFRECORD", "LabeledImages", "dataset_vocabulary", "load_split", "read_manifest",
           "select_images"]
