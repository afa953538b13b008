"""Dataset readers by name, so one flag picks the data a run trains and evaluates on.

A reader is `fn(source, split, tags, unseen_tags=()) -> LabeledImages`: `source` is
what the dataset is read from (a manifest file, or a dataset's root folder), `split`
"train" or "test", `tags` the vocabulary's tag names, which fix the label columns,
and `unseen_tags` the zero-shot tags, which some datasets' splits depend on (COCO's
training images are those without unseen objects).
"""

from pipelines import coco, nus_wide, open_images
from pipelines.manifest import read_manifest


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
    if dataset == "tfrecord":
        raise ValueError(
            "dataset 'tfrecord' is streamed from its shards, never loaded whole: read it with "
            "pipelines.tfrecord_source (as sdl_keras.train and sdl_keras.evaluate do)."
        )
    if dataset not in READERS:
        raise ValueError(f"Unknown dataset {dataset!r}; available: {sorted(READERS)}.")
    return READERS[dataset](source, split, list(tags), unseen_tags=list(unseen_tags))
