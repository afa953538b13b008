"""Dataset readers by name, so one flag picks the data a run trains and evaluates on.

A reader is `fn(source, split, tags) -> LabeledImages`: `source` is what the dataset
is read from (a manifest file, or a dataset's root folder), `split` "train" or
"test", and `tags` the vocabulary's tag names, which fix the label columns.
"""

from pipelines.manifest import read_manifest


def _manifest(source, split, tags):
    del split  # one manifest file is one split
    return read_manifest(source, tags)


READERS = {
    "manifest": _manifest,
}


def load_split(dataset, source, split, tags):
    """LabeledImages of one split of a registered dataset, labels over `tags`."""
    if dataset not in READERS:
        raise ValueError(f"Unknown dataset {dataset!r}; available: {sorted(READERS)}.")
    return READERS[dataset](source, split, list(tags))
