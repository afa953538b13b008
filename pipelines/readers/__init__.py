"""Dataset readers by name, so one flag picks the data a run trains and evaluates on.

A reader is `fn(source, split, tags, unseen_tags=()) -> LabeledImages`: `source` is
what the dataset is read from (a manifest file, or a dataset's root folder), `split`
"train" or "test", `tags` the vocabulary's tag names, which fix the label columns,
and `unseen_tags` the zero-shot tags, which some datasets' splits depend on (COCO's
training images are those without unseen objects).
"""

from pipelines.readers import coco, nus_wide, open_images
from pipelines.readers.manifest import LabeledImages, read_manifest

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


def load_split(dataset, source, split, tags, unseen_tags=()):
    """LabeledImages of one split of a registered dataset, labels over `tags`."""
    if dataset == TFRECORD:
        raise ValueError(
            "dataset 'tfrecord' is streamed from its shards, never loaded whole: read it with "
            "pipelines.tfrecord.records (as sdl_keras.train and sdl_keras.evaluate do)."
        )
    if dataset not in READERS:
        raise ValueError(f"Unknown dataset {dataset!r}; available: {sorted(READERS)}.")
    return READERS[dataset](source, split, list(tags), unseen_tags=list(unseen_tags))


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


__all__ = ["READERS", "TFRECORD", "LabeledImages", "dataset_vocabulary", "load_split", "read_manifest"]
