"""The converter of LabeledImages to TFRecord shards in this process (threads read and
validate the images; the record format: pipelines/tfrecord/format.py; the shards, their
resuming and statistics: pipelines/tfrecord/shards.py), and the library side of
`python -m pipelines.to_tfrecord`: a dataset's split and its tag lists, converted here or,
with Beam pipeline options, as an Apache Beam pipeline (pipelines/tfrecord/beam.py).
"""

import concurrent.futures
import logging
import os

import numpy as np

from pipelines.decode import UnreadableImageError
from pipelines.readers import dataset_vocabulary, load_split, open_images
from pipelines.text import read_lines, read_unique_lines
from pipelines.tfrecord.format import make_example, tags_sha1
from pipelines.tfrecord.shards import (  # noqa: F401  (prepare_image, ConversionSummary: this module's API too)
    DEFAULT_IMAGES_PER_SHARD,
    ConversionSummary,
    append_progress,
    finish_conversion,
    plan_conversion,
    prepare_image,
    write_shard,
)

logger = logging.getLogger(__name__)


def convert(
    images,
    output_dir,
    split,
    num_shards=None,
    images_per_shard=DEFAULT_IMAGES_PER_SHARD,
    max_side=None,
    strict=False,
    workers=4,
    progress=None,
    metadata=None,
    unseen=None,
):
    """Writes `images` (LabeledImages; `labels` may be any row-indexable (N, C) matrix,
    such as open_images.SparseRows) as TFRecord shards in `output_dir`.

    Args:
        num_shards: how many shards; default ceil(N / images_per_shard).
        max_side: re-encode images whose longer side exceeds this, scaled down to it.
        strict: the first unreadable image raises UnreadableImageError.
        workers: threads reading and validating images (decoding releases the GIL).
        progress: called as progress(images_done, total) after each shard.
        metadata: a JSON-able dict (e.g. dataset, source, tag-list digest) pinned with
            the settings, so a restart on other data is refused, and kept in the info file.
        unseen: the unseen tags' column indices, for the seen-only statistics of each
            shard (max_seen_positives, unseen_positive_images); None records only the
            all-tags max_positives.

    Returns:
        ConversionSummary (including shards finished by an earlier, interrupted run).
    """
    plan = plan_conversion(images, output_dir, split, num_shards, images_per_shard, max_side, metadata, unseen)
    bounds, total = plan.bounds, len(images)
    completed = sum(bounds[k + 1] - bounds[k] for k in plan.done)
    if progress is not None:
        progress(completed, total)

    def prepare(i):
        try:
            return prepare_image(images.paths[i], max_side), None
        except UnreadableImageError as error:
            if strict:
                raise
            return None, error

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k in plan.todo():
            indices = range(bounds[k], bounds[k + 1])
            entry = plan.new_entry(k)

            def examples():
                for i, (data, error) in zip(indices, pool.map(prepare, indices)):
                    if error is not None:
                        entry["skipped"].append([error.path, error.reason])
                        continue
                    row = np.asarray(images.labels[i])
                    plan.count(entry, row)
                    yield make_example(data, images.ids[i], row)

            entry["bytes"] = write_shard(plan.shard_path(k), examples())
            append_progress(plan.progress_path, entry)
            completed += len(indices)
            if progress is not None:
                progress(completed, total)
    return finish_conversion(plan)


def read_for_conversion(dataset, source, split, tags, unseen_tags):
    """LabeledImages for a split; Open Images' labels stay sparse (a dense train split
    would not fit in memory), the others come from the pipelines.readers reader."""
    if dataset == "open_images":
        images, report = open_images.read_open_images(source, split, tags, unseen_tags)
        (logger.warning if report.skipped else logger.info)("%s", report.summary(f"Open Images {split}"))
        return images
    return load_split(dataset, source, split, tags, unseen_tags)


def _write_lines(path, lines):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)


def write_tag_lists(output_dir, tags, unseen, dataset="", classes_dir=""):
    """tags.txt and unseen_tags.txt (and Open Images' class names, tag_names.txt) for the
    train command's --tags and --unseen_tags."""
    os.makedirs(output_dir, exist_ok=True)
    _write_lines(os.path.join(output_dir, "tags.txt"), tags)
    _write_lines(os.path.join(output_dir, "unseen_tags.txt"), unseen)
    if dataset == "open_images" and classes_dir:
        _write_lines(os.path.join(output_dir, "tag_names.txt"), open_images.class_names(classes_dir, tags))


def split_vocabulary(dataset, source, tags_file="", unseen_tags_file="", zero_shot_split="", classes_dir="",
                     allow_pickle=False):
    """(tags, unseen_tags) a conversion labels with: the files given, else the dataset's own
    zero-shot vocabulary (pipelines.readers.dataset_vocabulary); unseen tags must be tags."""
    if tags_file:
        tags = read_unique_lines(tags_file)
        unseen = read_lines(unseen_tags_file) if unseen_tags_file else []
    else:
        tags, unseen = dataset_vocabulary(dataset, source, zero_shot_split, classes_dir, allow_pickle)
        if unseen_tags_file:
            unseen = read_lines(unseen_tags_file)
    known = set(tags)
    unknown = [tag for tag in unseen if tag not in known]
    if unknown:
        raise ValueError(
            f"{unseen_tags_file or 'The unseen tag list'}: {len(unknown)} unseen tag(s) not in the tag list "
            f"(e.g. {unknown[:5]})."
        )
    return tags, unseen


def convert_split(dataset, source, split, output_dir, tags, unseen, classes_dir="", progress=None,
                  pipeline_args=None, **options):
    """Reads one split of a dataset and converts it (`convert`, with `options`; as an Apache
    Beam pipeline with `pipeline_args`, pipelines/tfrecord/beam.py), then writes the tag lists
    beside the shards; returns the ConversionSummary.

    `progress(done, total)` is called as shards complete (in this process); `total` is known
    once the split has been read.
    """
    index = {tag: i for i, tag in enumerate(tags)}
    images = read_for_conversion(dataset, source, split, tags, unseen)
    logger.info("%s %s: %d images to convert.", dataset, split, len(images))
    common = dict(
        metadata={"dataset": dataset, "source": os.path.abspath(source), "tags_sha1": tags_sha1(tags)},
        # The training command reads the seen-only positives bound from these statistics.
        unseen=[index[tag] for tag in unseen],
    )
    if pipeline_args:
        from pipelines.tfrecord import beam

        options.pop("workers", None)  # Beam's workers
        summary = beam.convert(images, output_dir, split, pipeline_args, **common, **options)
    else:
        summary = convert(images, output_dir, split, progress=progress, **common, **options)
    # Written after the conversion, whose settings check refuses a folder made with other tags.
    write_tag_lists(output_dir, tags, unseen, dataset, classes_dir)
    return summary
