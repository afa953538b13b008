"""`python -m pipelines.to_tfrecord --runner=RUNNER`: the conversion as an Apache Beam
pipeline, on any runner (DirectRunner here; Dataflow, Flink or Spark for Open Images' 9
million images). Every other Beam pipeline option passes through.

It writes what `convert.convert` writes, file for file: the same SPLIT-conversion.json, the
same shards (shard k holds images [k N / S, (k + 1) N / S), in input order), a progress entry
per finished shard with its statistics, SPLIT-info.json and the tag lists, so training
reads a Beam conversion as any other (pipelines/tfrecord/records.py), and either converter
resumes the other's work.

    the images of the shards not yet finished (Create, one element per image)
      -> PrepareImage   the bytes to store, as `prepare_image` validates them
                        unreadable -> side output "unreadable" (path, reason), counted
      -> CoGroupByKey   by shard: its records and its unreadable images
      -> WriteShard     the shard file (temporary name, then renamed), then its progress
                        entry (images written, skipped, positives statistics, size)

Which worker prepares which image and writes which shard is Beam's choice. Resuming: a
rerun skips the shards the progress file lists whose files are complete (their size is the
one recorded) and rewrites the others. The output folder must be one file system all
workers write to (a distributed runner's workers: a shared mount).
"""

import logging

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam import new_pipeline, run_pipeline
from pipelines.decode import UnreadableImageError
from pipelines.tfrecord.shards import (
    DEFAULT_IMAGES_PER_SHARD,
    append_progress,
    finish_conversion,
    plan_conversion,
    prepare_image,
    write_shard,
)
from pipelines.tfrecord.format import make_example

logger = logging.getLogger(__name__)

NAMESPACE = "pipelines.to_tfrecord"
UNREADABLE = "unreadable"


def _compact(row):
    """A {1, 0, -1} label row as (C, default, indices of the other values): small elements."""
    row = np.asarray(row, np.float32)
    values, counts = np.unique(row, return_counts=True)
    default = float(values[np.argmax(counts)]) if counts.size else 0.0
    return row.size, default, {float(v): np.flatnonzero(row == v).astype(np.int32) for v in values if v != default}


def _dense(compact):
    size, default, others = compact
    row = np.full(size, default, np.float32)
    for value, indices in others.items():
        row[indices] = value
    return row


class PrepareImage(beam.DoFn):
    """(shard, (index, path, id, labels)) -> (shard, (index, example, labels)); an unreadable
    image -> the "unreadable" output as (shard, (index, path, reason)), counted."""

    def __init__(self, max_side=None, strict=False):
        self.max_side, self.strict = max_side, strict
        self.unreadable = beam.metrics.Metrics.counter(NAMESPACE, "unreadable_images")
        self.prepared = beam.metrics.Metrics.counter(NAMESPACE, "images")

    def process(self, element):
        shard, (index, path, image_id, labels) = element
        try:
            data = prepare_image(path, self.max_side)
        except UnreadableImageError as error:
            if self.strict:
                raise
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(UNREADABLE, (shard, (index, error.path, error.reason)))
            return
        self.prepared.inc()
        yield shard, (index, make_example(data, image_id, _dense(labels)), labels)


class WriteShard(beam.DoFn):
    """(shard, {"records": ..., "unreadable": ...}) -> the shard file and its progress entry."""

    def __init__(self, plan):
        self.plan = plan

    def process(self, grouped):
        shard, parts = grouped
        entry = self.plan.new_entry(shard)
        records = sorted(parts["records"], key=lambda record: record[0])
        entry["skipped"] = [[path, reason] for _, path, reason in sorted(parts[UNREADABLE])]
        for _, _, labels in records:
            self.plan.count(entry, _dense(labels))
        entry["bytes"] = write_shard(self.plan.shard_path(shard), (example for _, example, _ in records))
        append_progress(self.plan.progress_path, entry)
        logger.info("Wrote %s: %d records.", self.plan.shard_path(shard), entry["written"])
        yield entry


def convert(images, output_dir, split, pipeline_args, num_shards=None, images_per_shard=DEFAULT_IMAGES_PER_SHARD,
            max_side=None, strict=False, metadata=None, unseen=None):
    """`convert.convert` as a Beam pipeline run with `pipeline_args` (--runner=..., Beam's
    options); returns the ConversionSummary (including shards an earlier run finished)."""
    plan = plan_conversion(images, output_dir, split, num_shards, images_per_shard, max_side, metadata, unseen)
    todo = plan.todo()
    elements = [(k, (i, images.paths[i], images.ids[i], _compact(images.labels[i])))
                for k in todo for i in range(plan.bounds[k], plan.bounds[k + 1])]
    counted = 0
    if elements:
        pipeline = new_pipeline(PipelineOptions(list(pipeline_args)))
        prepared = (pipeline | "Images" >> beam.Create(elements)
                    | "Prepare" >> beam.ParDo(PrepareImage(max_side, strict)).with_outputs(UNREADABLE, main="records"))
        ({"records": prepared.records, UNREADABLE: prepared[UNREADABLE]} | "ByShard" >> beam.CoGroupByKey()
         | "WriteShards" >> beam.ParDo(WriteShard(plan)))
        result = run_pipeline(pipeline)
        query = beam.metrics.MetricsFilter().with_namespace(NAMESPACE).with_name("unreadable_images")
        counted = sum(c.committed or 0 for c in result.metrics().query(query)["counters"])
    logger.info("%s: Beam wrote %d of %d shards (%d were finished before) and counted %d unreadable images.", split,
                len(todo), plan.num_shards, plan.num_shards - len(todo), counted)
    return finish_conversion(plan)
