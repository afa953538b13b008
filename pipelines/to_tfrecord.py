r"""Converts one split of a dataset to TFRecord shards (pipelines/tfrecord/).

  python -m pipelines.to_tfrecord --flagfile=configs/to_tfrecord.flags \
      --dataset=nus_wide --source=/data/NUS-WIDE --split=train --output_dir=/data/nus_records

Labels follow the tag list given by --tags (and --unseen_tags), or, without --tags,
the dataset's own zero-shot vocabulary: NUS-WIDE's from the dataset root, COCO's from
--zero_shot_split, Open Images' from --classes_dir. The lists used are written to
the output folder (tags.txt, unseen_tags.txt, and for Open Images tag_names.txt, the
class names to look word vectors up by), for the train command's --tags and
--unseen_tags. Rerunning the same command after an interruption resumes it. With
--runner=DirectRunner (or DataflowRunner, ...) the conversion runs as an Apache Beam
pipeline (pipelines/tfrecord/beam.py) and writes the same files.
"""


from absl import flags

from pipelines import command

FLAGS = flags.FLAGS


def define_flags():
    from pipelines.readers import READERS
    from pipelines.tfrecord.convert import DEFAULT_IMAGES_PER_SHARD

    flags.DEFINE_string("dataset", None, f"Reader from pipelines.readers: {', '.join(READERS)}.")
    flags.DEFINE_string("source", None, "What the reader reads: a dataset root, a labels file or a manifest.")
    flags.DEFINE_enum("split", "train", ["train", "test"], "Which split to convert.")
    flags.DEFINE_string("output_dir", None, "Folder for the shards and the tag lists.")
    flags.DEFINE_string("tags", "", "Tag list (one per line); empty: the dataset's zero-shot vocabulary.")
    flags.DEFINE_string("unseen_tags", "", "Unseen tags (one per line); empty: the dataset's.")
    flags.DEFINE_string("zero_shot_split", "", "COCO: the seen/unseen split JSON (split_48_17.json).")
    flags.DEFINE_string("classes_dir", "", "Open Images: the folder of classes-trainable.txt and the unseen lists.")
    flags.DEFINE_bool("allow_pickle", False, "Open Images: resolve the unseen classes from unseen_labels.pkl (runs code).")
    flags.DEFINE_integer("num_shards", 0, "Number of shards; 0: one per --images_per_shard images.")
    flags.DEFINE_integer("images_per_shard", DEFAULT_IMAGES_PER_SHARD, "Images per shard when --num_shards=0.")
    flags.DEFINE_integer("max_side", 0, "Re-encode images whose longer side exceeds this (0: keep every original).")
    flags.DEFINE_integer("workers", 4, "Threads reading and validating images.")
    flags.DEFINE_bool("strict", False, "Stop at the first unreadable image instead of skipping it.")
    flags.DEFINE_bool("vocabulary_only", False, "Only write the tag lists, for training from the raw files.")
    flags.DEFINE_string("runner", None, "Run as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, "
                        "...); Beam's own flags (--name=value) pass through.")
    flags.mark_flags_as_required(["dataset", "source", "output_dir"])


def main(argv):
    argv, pipeline_args = command.split_pipeline_options(argv, FLAGS.runner)
    command.no_arguments(argv)
    from pipelines.progress import Progress
    from pipelines.tfrecord import convert
    from pipelines.tfrecord.format import shard_pattern

    tags, unseen = convert.split_vocabulary(
        FLAGS.dataset, FLAGS.source, FLAGS.tags, FLAGS.unseen_tags, FLAGS.zero_shot_split, FLAGS.classes_dir,
        FLAGS.allow_pickle,
    )
    if not FLAGS.vocabulary_only:
        bar = {}
        summary = convert.convert_split(
            FLAGS.dataset, FLAGS.source, FLAGS.split, FLAGS.output_dir, tags, unseen, FLAGS.classes_dir,
            progress=lambda done, total: bar.setdefault("bar", Progress(total, "image")).update(done),
            num_shards=FLAGS.num_shards or None, images_per_shard=FLAGS.images_per_shard,
            max_side=FLAGS.max_side or None, strict=FLAGS.strict, workers=FLAGS.workers, pipeline_args=pipeline_args,
        )
        print(f"Wrote {summary.num_examples} examples in {summary.num_shards} shards: "
              f"{shard_pattern(FLAGS.output_dir, FLAGS.split)}")
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
    else:
        convert.write_tag_lists(FLAGS.output_dir, tags, unseen, FLAGS.dataset, FLAGS.classes_dir)
    print(f"{len(tags)} tags ({len(unseen)} unseen) listed in {FLAGS.output_dir}/tags.txt and unseen_tags.txt.")


def run():
    command.run(main, define_flags, pipeline_options=True)


if __name__ == "__main__":
    run()
