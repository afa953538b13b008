r"""Converts one split of a dataset to TFRecord shards (pipelines/tfrecord.py).

  python -m pipelines.to_tfrecord --flagfile=configs/to_tfrecord.flags \
      --dataset=nus_wide --source=/data/NUS-WIDE --split=train --output_dir=/data/nus_records

Labels follow the tag list given by --tags (and --unseen_tags), or, without --tags,
the dataset's own zero-shot vocabulary: NUS-WIDE's from the dataset root, COCO's from
--zero_shot_split, Open Images' from --classes_dir. The lists used are written to
the output folder (tags.txt, unseen_tags.txt, and for Open Images tag_names.txt, the
class names to look word vectors up by), for the train command's --tags and
--unseen_tags. Rerunning the same command after an interruption resumes it.
"""

import logging
import os

from absl import app, flags

from pipelines import coco, nus_wide, open_images, tfrecord
from pipelines.datasets import READERS, load_split
from sdl_keras.embeddings import read_lines

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, f"Reader from pipelines.datasets: {', '.join(READERS)}.")
flags.DEFINE_string("source", None, "What the reader reads: a dataset root, a labels file or a manifest.")
flags.DEFINE_enum("split", "train", ["train", "test"], "Which split to convert.")
flags.DEFINE_string("output_dir", None, "Folder for the shards and the tag lists.")
flags.DEFINE_string("tags", "", "Tag list (one per line); empty: the dataset's zero-shot vocabulary.")
flags.DEFINE_string("unseen_tags", "", "Unseen tags (one per line); empty: the dataset's.")
flags.DEFINE_string("zero_shot_split", "", "COCO: the seen/unseen split JSON (split_48_17.json).")
flags.DEFINE_string("classes_dir", "", "Open Images: the folder of classes-trainable.txt and the unseen lists.")
flags.DEFINE_bool("allow_pickle", False, "Open Images: resolve the unseen classes from unseen_labels.pkl (runs code).")
flags.DEFINE_integer("num_shards", 0, "Number of shards; 0: one per --images_per_shard images.")
flags.DEFINE_integer("images_per_shard", tfrecord.DEFAULT_IMAGES_PER_SHARD, "Images per shard when --num_shards=0.")
flags.DEFINE_integer("max_side", 0, "Re-encode images whose longer side exceeds this (0: keep every original).")
flags.DEFINE_integer("workers", 4, "Threads reading and validating images.")
flags.DEFINE_bool("strict", False, "Stop at the first unreadable image instead of skipping it.")
flags.DEFINE_bool("vocabulary_only", False, "Only write the tag lists, for training from the raw files.")

logger = logging.getLogger(__name__)


def dataset_vocabulary(dataset, source, zero_shot_split="", classes_dir="", allow_pickle=False):
    """(tags, unseen_tags) of a dataset's zero-shot protocol."""
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


def read_for_conversion(dataset, source, split, tags, unseen_tags):
    """LabeledImages for a split; Open Images' labels stay sparse (a dense train split
    would not fit in memory), the others come from the pipelines.datasets reader."""
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
    print(f"{len(tags)} tags ({len(unseen)} unseen) listed in {output_dir}/tags.txt and unseen_tags.txt.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import keras

    if FLAGS.tags:
        tags = read_lines(FLAGS.tags)
        unseen = read_lines(FLAGS.unseen_tags) if FLAGS.unseen_tags else []
    else:
        tags, unseen = dataset_vocabulary(
            FLAGS.dataset, FLAGS.source, FLAGS.zero_shot_split, FLAGS.classes_dir, FLAGS.allow_pickle
        )
        if FLAGS.unseen_tags:
            unseen = read_lines(FLAGS.unseen_tags)
    if FLAGS.vocabulary_only:
        write_tag_lists(FLAGS.output_dir, tags, unseen, FLAGS.dataset, FLAGS.classes_dir)
        return

    index = {tag: i for i, tag in enumerate(tags)}
    unknown = [tag for tag in unseen if tag not in index]
    if unknown:
        raise ValueError(
            f"{FLAGS.unseen_tags or 'The unseen tag list'}: {len(unknown)} unseen tag(s) not in the tag list "
            f"(e.g. {unknown[:5]})."
        )
    images = read_for_conversion(FLAGS.dataset, FLAGS.source, FLAGS.split, tags, unseen)
    print(f"{FLAGS.dataset} {FLAGS.split}: {len(images)} images to convert.")
    bar = keras.utils.Progbar(len(images), unit_name="image")
    summary = tfrecord.convert(
        images,
        FLAGS.output_dir,
        FLAGS.split,
        num_shards=FLAGS.num_shards or None,
        images_per_shard=FLAGS.images_per_shard,
        max_side=FLAGS.max_side or None,
        strict=FLAGS.strict,
        workers=FLAGS.workers,
        progress=lambda done, total: bar.update(done),
        metadata={
            "dataset": FLAGS.dataset,
            "source": os.path.abspath(FLAGS.source),
            "tags_sha1": tfrecord.tags_sha1(tags),
        },
        # The training command reads the seen-only positives bound from these statistics.
        unseen=[index[tag] for tag in unseen],
    )
    # Written after the conversion, whose settings check refuses a folder made with other tags.
    write_tag_lists(FLAGS.output_dir, tags, unseen, FLAGS.dataset, FLAGS.classes_dir)
    print(
        f"Wrote {summary.num_examples} examples in {summary.num_shards} shards: "
        f"{tfrecord.shard_pattern(FLAGS.output_dir, FLAGS.split)}"
    )
    stats = summary.statistics
    if "max_seen_positives" in stats:
        print(f"At most {stats['max_seen_positives']} positive seen tags per image ({stats['max_positives']} in all).")
    if FLAGS.split == "train" and stats.get("unseen_positive_images"):
        print(f"Warning: {stats['unseen_positive_images']} image(s) have an unseen tag positive, which training "
              "refuses (it would leak the zero-shot tags).")
    if summary.skipped:
        print(f"Skipped {len(summary.skipped)} unreadable image(s), listed in {FLAGS.split}-info.json; e.g.:")
        for path, reason in summary.skipped[:5]:
            print(f"  {path}: {reason}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["dataset", "source", "output_dir"])
    app.run(main)
