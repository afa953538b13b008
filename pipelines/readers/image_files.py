"""Which of a dataset's image files are usable before any is decoded: missing files,
zero-byte files, and copies of a placeholder image.

Datasets scraped from Flickr (NUS-WIDE above all) hold many photos that were deleted
after the dataset was published; re-downloading them gives Flickr's "photo
unavailable" placeholder, the same bytes under thousands of names. No real photo
recurs byte for byte under many different Flickr ids, so a file whose exact bytes
recur at least `min_copies` times is taken to be a placeholder. Only files that
share a byte size with `min_copies - 1` others are hashed, so the check costs one
`stat` per image plus reading a handful of files.

Files that exist but cannot be decoded (truncated, corrupt, unknown format) are
found later, when they are decoded: see pipelines/files.py and pipelines/tfrecord/convert.py.
"""

import collections
import dataclasses
import hashlib
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MIN_COPIES = 10


@dataclasses.dataclass
class ImageFileReport:
    """The outcome of `check_image_files`: indices of usable files, and the paths of the others."""

    keep: np.ndarray
    missing: list = dataclasses.field(default_factory=list)
    empty: list = dataclasses.field(default_factory=list)
    placeholders: list = dataclasses.field(default_factory=list)

    @property
    def skipped(self):
        return len(self.missing) + len(self.empty) + len(self.placeholders)

    def summary(self, what="images"):
        """One line for the log: how many of `what` were kept, and why the others were not."""
        total = len(self.keep) + self.skipped
        if not self.skipped:
            return f"{what}: all {total} image files present."
        parts = [
            f"{len(paths)} {reason} (e.g. {paths[0]})"
            for reason, paths in (
                ("missing", self.missing),
                ("zero-byte", self.empty),
                ("placeholder copies", self.placeholders),
            )
            if paths
        ]
        return f"{what}: skipped {self.skipped} of {total} image files: " + "; ".join(parts) + "."


def _digest(path, chunk=1 << 16):
    sha = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            sha.update(block)
    return sha.hexdigest()


def check_image_files(paths, detect_placeholders=False, min_copies=DEFAULT_MIN_COPIES):
    """Sorts `paths` into usable files and missing, zero-byte or placeholder ones.

    Args:
        paths: image file paths.
        detect_placeholders: also skip files whose exact bytes occur at least
            `min_copies` times among `paths` (see the module docstring).
        min_copies: how many identical copies make a placeholder.

    Returns:
        ImageFileReport; `keep` holds the indices of the usable paths, in order.
    """
    sizes = np.full(len(paths), -1, dtype=np.int64)
    missing, empty = [], []
    for i, path in enumerate(paths):
        try:
            sizes[i] = os.stat(path).st_size
        except OSError:
            missing.append(path)
            continue
        if sizes[i] == 0:
            empty.append(path)
    placeholder_index = set()
    if detect_placeholders and len(paths) >= min_copies:
        present = np.nonzero(sizes > 0)[0]
        values, counts = np.unique(sizes[present], return_counts=True)
        common = set(values[counts >= min_copies].tolist())
        by_digest = collections.defaultdict(list)
        for i in present:
            if int(sizes[i]) in common:
                by_digest[_digest(paths[i])].append(int(i))
        for indices in by_digest.values():
            if len(indices) >= min_copies:
                placeholder_index.update(indices)
    keep = np.array(
        [i for i in range(len(paths)) if sizes[i] > 0 and i not in placeholder_index], dtype=np.int64
    )
    placeholders = [paths[i] for i in sorted(placeholder_index)]
    return ImageFileReport(keep=keep, missing=missing, empty=empty, placeholders=placeholders)
