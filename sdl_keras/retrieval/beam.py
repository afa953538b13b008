"""`python -m sdl_keras.search build --runner=RUNNER`: encoding images into an index as an
Apache Beam pipeline, on any runner (DirectRunner here, in one process or several;
Dataflow, Flink or Spark for a large collection). Every other Beam pipeline option passes
through (--direct_num_workers, --direct_running_mode, --project, --temp_location, ...).

    images: files or a manifest (Create), or TFRecords (ReadFromTFRecord)
      -> ReadImage      the bytes of each image           unreadable -> side output "unreadable"
      -> BatchElements  --batch_size images
      -> EncodeImages   the encoder, loaded once per worker: the export's `matrix` signature
                        (--model), or a run's Keras model (--run_dir) run in the DoFn itself,
                        decoding as the run decodes (no temporary export; the same encoders
                        the single-process build uses)         undecodable -> "unreadable"
      -> a directory: keyed by shard, a hash of the id mod ceil(images / --shard_size)
           -> GroupByKey -> WriteShard (the shard's files, its ids in order, its ScaNN
           searcher) -> the shards' entries (a report)
         a Milvus collection: BatchElements -> WriteToMilvus (the entities of one add),
           and the ids that repeat (a report)

The launcher holds the index's writer lock (a directory's WriterLock, a collection's
WriterLease) from creating the index until, the pipeline done, it lists the shards in
index.json (`RetrievalIndex.attach`) or commits the add, unless an id repeats: no other
writer removes the workers' unfinished shards or entities meanwhile, and a failed or killed
build leaves nothing a reader sees. The unreadable images are counted (Beam metric
sdl_keras.search/unreadable_images) and written by the side output as JSON lines, which the
command reports as the one-process build does. Which worker encodes which image is Beam's
business; the index is the same: its shards hold the same ids (sorted within a shard)
whatever the runner and workers, and the matrices are the encoder's.

The workers write the index: a directory must be on a file system they all reach (a
distributed runner's workers: a shared mount), a milvus-lite file can only be opened by one
process (DirectRunner's in_memory mode), a Milvus server takes every worker's inserts. The
reports go under --temp_location where it is given (storage all workers and the launcher
reach, as a distributed runner needs), else a local temporary folder.
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions

from pipelines.beam import is_direct, new_pipeline, run_pipeline
from sdl_keras.retrieval import encoding
from sdl_keras.retrieval.backends import create_index, open_index, parse_location
from sdl_keras.retrieval.index import write_shard
from sdl_keras.retrieval.lock import WriterLock

logger = logging.getLogger(__name__)

NAMESPACE = "sdl_keras.search"
UNREADABLE = "unreadable"
SHARDS = "shards"
REPEATED = "repeated"


class ReadImage(beam.DoFn):
    """(id, path or bytes) -> (id, bytes); an unreadable image goes to the "unreadable"
    output as (id, reason) and is counted."""

    def __init__(self):
        self.unreadable = beam.metrics.Metrics.counter(NAMESPACE, "unreadable_images")

    def process(self, item):
        image_id, data, reason = encoding.read_item(item)
        if reason:
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(UNREADABLE, (image_id, reason))
        else:
            yield image_id, data


class EncodeImages(beam.DoFn):
    """Batches of (id, bytes) -> (id, (M, d) float32 matrix), through the encoder of an
    export (`model`) or a run (`run_dir`), loaded once per worker."""

    def __init__(self, model=None, run_dir=None):
        self.model, self.run_dir = model, run_dir
        self.unreadable = beam.metrics.Metrics.counter(NAMESPACE, "unreadable_images")
        self.encoded = beam.metrics.Metrics.counter(NAMESPACE, "encoded_images")

    def setup(self):
        self.encoder = encoding.make_encoder(self.model, self.run_dir)

    def process(self, batch):
        ids, matrices, failed = encoding.encode_batch(self.encoder, batch)
        self.encoded.inc(len(ids))
        for image_id, matrix in zip(ids, matrices if ids else ()):
            yield image_id, np.asarray(matrix, np.float32)
        for image_id, reason in failed:
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(UNREADABLE, (image_id, reason))


class WriteShard(beam.DoFn):
    """(shard number, its (id, matrix) pairs) -> the shard's folder in the index directory
    (ids sorted, so the shard is the same whatever the workers), -> its {"name", "count"}."""

    def __init__(self, directory, dtype, scann):
        self.directory, self.dtype, self.scann = directory, dtype, scann

    def process(self, keyed):
        number, images = keyed
        images = sorted(images, key=lambda pair: pair[0])
        yield write_shard(self.directory, f"shard-{number:05d}", [i for i, _ in images],
                          np.stack([m for _, m in images]), self.dtype, self.scann)


class WriteToMilvus(beam.DoFn):
    """Batches of (id, matrix) -> entities of add `add_id` in a Milvus collection (not seen
    by searches until the commit) -> how many images each batch inserted."""

    def __init__(self, uri, collection, add_id):
        self.uri, self.collection, self.add_id = uri, collection, add_id

    def setup(self):
        from sdl_keras.retrieval.milvus import MilvusIndex

        self.index = MilvusIndex.open(self.uri, self.collection, token=os.environ.get("MILVUS_TOKEN"))

    def process(self, batch):
        yield self.index.insert(self.add_id, [i for i, _ in batch], np.stack([m for _, m in batch]))

    def teardown(self):
        self.index.close()


def _shard_of(pair, shard_size, total):
    """(shard number, pair): a hash of the id, so the split is the same on any runner
    (a digest, not crc32, whose low bits barely change between ids like 001.png, 002.png)."""
    digest = hashlib.blake2b(pair[0].encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % max(1, math.ceil(total / shard_size)), pair


def _report(values, reports, name):
    """A PCollection of JSON-serializable values -> JSON lines under `reports` (read back
    by `_read_report` once the pipeline is done)."""
    return (values | f"{name}AsJson" >> beam.Map(lambda value: json.dumps(value, ensure_ascii=False))
            | f"{name}Report" >> beam.io.WriteToText(FileSystems.join(reports, name), ".jsonl"))


def _read_report(reports, name):
    values = []
    for match in FileSystems.match([FileSystems.join(reports, name + "*")])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            values += [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
    return values


def _write_shards(matrices, items, directory, dtype, scann, shard_size, reports):
    """(id, matrix) pairs -> shard folders -> their entries, reported."""
    total = items | "CountImages" >> beam.combiners.Count.Globally()
    entries = (matrices
               | "Shard" >> beam.Map(_shard_of, shard_size, beam.pvalue.AsSingleton(total))
               | "GroupShards" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShard(directory, dtype, scann)))
    _report(entries, reports, SHARDS)


def _write_milvus(matrices, where, add_id, batch_size, reports):
    """(id, matrix) pairs -> entities of add `add_id`; the ids that repeat, reported."""
    repeated = (matrices | "Ids" >> beam.Keys() | "CountIds" >> beam.combiners.Count.PerElement()
                | "Repeated" >> beam.Filter(lambda pair: pair[1] > 1) | "RepeatedIds" >> beam.Keys())
    _report(repeated, reports, REPEATED)
    (matrices
     | "Rebatch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=max(batch_size, 256))
     | "Insert" >> beam.ParDo(WriteToMilvus(where.uri, where.collection, add_id)))


def read_images(pipeline, paths=(), manifest=None, tfrecords=None):
    """The (id, path or bytes) items of the images to index, given one way (as
    `encoding.image_items`): files and folders, a manifest, or a glob of TFRecord files."""
    if sum([bool(paths), bool(manifest), bool(tfrecords)]) != 1:
        raise ValueError("Give the images one way: --images (or paths after the command), --manifest or --tfrecords.")
    if tfrecords:
        if not FileSystems.match([tfrecords])[0].metadata_list:  # local files, gs://, ...
            raise FileNotFoundError(f"No TFRecord files match {tfrecords!r}.")
        return (pipeline | "ReadRecords" >> beam.io.ReadFromTFRecord(tfrecords)
                | "ParseRecords" >> beam.Map(encoding.record_item))
    items, _ = encoding.image_items(paths, manifest)
    return pipeline | "Images" >> beam.Create(items)


@contextlib.contextmanager
def _reports_folder(options):
    """Where the workers write the run's reports: under --temp_location, else a local
    temporary folder; removed at the end."""
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    folder = (FileSystems.join(temp_location, f"sdl_search_{uuid.uuid4().hex}") if temp_location
              else tempfile.mkdtemp(prefix="sdl_search_"))
    try:
        yield folder
    finally:
        if FileSystems.exists(folder):
            FileSystems.delete([folder])


def check_runner(location, options):
    """ValueError where the index cannot take the workers' writes: a milvus-lite file is
    opened by one process only."""
    from sdl_keras.retrieval.milvus import is_remote

    where = parse_location(location)
    lite = where.is_milvus and not is_remote(where.uri)
    if lite and (not is_direct(options) or options.view_as(DirectOptions).direct_running_mode != "in_memory"):
        raise ValueError(f"{location}: a milvus-lite file is opened by one process only; build it on DirectRunner "
                         "in its in_memory mode, or give a Milvus server (milvus:http://host:19530#collection).")


def build(location, pipeline_args, paths=(), manifest=None, tfrecords=None, model=None, run_dir=None,
          vocabulary=None, dtype="float32", aggregation=None, scann=None, milvus=None, shard_size=100_000,
          batch_size=32, overwrite=False, lock_timeout=0):
    """Creates the index at `location` (a directory or milvus:URI#COLLECTION) from images, as
    a Beam pipeline run with `pipeline_args` (--runner=..., Beam's options). Arguments as
    `encoding.build`; the index's writer lock is waited for `lock_timeout` seconds. Returns
    (index, added, skipped: [(id, reason)])."""
    options = PipelineOptions(list(pipeline_args))
    check_runner(location, options)
    where = parse_location(location)
    # The launcher loads the model once for M, d, the aggregation, the calibration and what
    # the index records.
    encoder = encoding.make_encoder(model, run_dir)
    vocabulary = encoding.load_vocabulary(vocabulary, run_dir)
    settings = (*encoding.matrix_shape(encoder), dtype, aggregation or encoder.aggregation or "max", vocabulary, scann,
                milvus, encoder.source, overwrite, encoding.index_calibration(encoder, vocabulary))
    del encoder

    def create():
        return create_index(location, *settings)

    if where.is_milvus:
        index = create()  # the lease lives in the collection
        index.lock_timeout = lock_timeout
        writing = index.writer()
    else:
        writing = WriterLock(where.directory, lock_timeout)
    with writing, _reports_folder(options) as reports:
        if where.is_milvus:
            add_id = index.begin_add()
        else:
            index = create()
        pipeline = new_pipeline(options)
        items = read_images(pipeline, paths, manifest, tfrecords)
        read = items | "Read" >> beam.ParDo(ReadImage()).with_outputs(UNREADABLE, main="images")
        encoded = (read.images | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
                   | "Encode" >> beam.ParDo(EncodeImages(model, run_dir)).with_outputs(UNREADABLE, main="matrices"))
        _report((read[UNREADABLE], encoded[UNREADABLE]) | "Unreadable" >> beam.Flatten(), reports, UNREADABLE)
        if where.is_milvus:
            _write_milvus(encoded.matrices, where, add_id, batch_size, reports)
        else:
            _write_shards(encoded.matrices, items, where.directory, dtype, scann, shard_size, reports)
        try:
            run_pipeline(pipeline)
            if where.is_milvus:
                repeated = _read_report(reports, REPEATED)
                if repeated:
                    raise ValueError(f"Image id(s) repeated in the input: {sorted(repeated)[:10]}")
                index.commit(add_id)
            else:
                index.attach(_read_report(reports, SHARDS))  # refuses repeated ids itself
        except BaseException:
            if where.is_milvus:
                index.discard(add_id)
            raise
        skipped = [tuple(pair) for pair in _read_report(reports, UNREADABLE)]
    if where.is_milvus:
        index.close()
    index = open_index(location)
    for image_id, reason in skipped:
        logger.warning("Skipped %s: %s", image_id, reason)
    return index, len(index), skipped
