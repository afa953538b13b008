"""Training from TFRecord shards (--dataset=tfrecord): a partially annotated dataset with
seen and unseen tags is converted, then trained on without a label matrix in memory.
Steps come from the conversion's counts, the loss's positives bound from its statistics,
only the seen columns reach the loss, and a vocabulary other than the records' is an
error naming the file. A damaged shard is skipped and counted, or with --strict an error
naming it; rerunning its conversion rewrites it."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

# Two logical CPUs for MirroredStrategy; only possible before TensorFlow starts its
# devices (when this file runs alone, as under Bazel).
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:
    pass

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.splits import split_batches  # noqa: E402
from pipelines.tfrecord import convert as tfrecord  # noqa: E402
from pipelines.tfrecord import records as record_sets  # noqa: E402
from pipelines.tfrecord.format import tags_sha1  # noqa: E402
from pipelines.readers.manifest import LabeledImages  # noqa: E402
from sdl_keras import inference, training  # noqa: E402
from sdl_keras.config import TrainConfig  # noqa: E402
from sdl_keras.training import distribute  # noqa: E402
from sdl_keras.training.data import load_vocabulary, training_data  # noqa: E402
from tests import testing  # noqa: E402

TAGS = ["cat", "dog", "car", "tree", "sky", "boat", "horse", "bird"]
UNSEEN = ["horse", "bird"]  # columns 6 and 7
SEEN_COLUMNS = [0, 1, 2, 3, 4, 5]
NUM_TRAIN, NUM_TEST, BATCH = 40, 12, 8
MOST_SEEN_POSITIVES = 4  # image 5 of the train split


def jpeg(seed, size=(24, 20)):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (3, 3, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
    path = os.path.join(jpeg.folder, f"{seed}.jpg")
    image.save(path, quality=90)
    return path


def partial_labels(count, seed, unseen_positives):
    """{1, 0, -1} rows: a few positives and negatives per image, the rest unknown."""
    rng = np.random.default_rng(seed)
    labels = np.full((count, len(TAGS)), -1.0, np.float32)
    for row in labels:
        row[rng.choice(6, size=2, replace=False)] = 0.0
        row[rng.choice(6, size=rng.integers(1, 3), replace=False)] = 1.0
        if unseen_positives:
            row[6 + rng.integers(0, 2)] = 1.0
    return labels


def convert(folder, split, labels, first_id, num_shards, unseen=(6, 7), tags=TAGS):
    paths = [jpeg(first_id + i) for i in range(len(labels))]
    images = LabeledImages(paths, [f"{split}{i}" for i in range(len(labels))], labels)
    return tfrecord.convert(
        images, folder, split, num_shards=num_shards, metadata={"tags_sha1": tags_sha1(tags)},
        unseen=unseen,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("records_data")
    jpeg.folder = str(root)
    records = str(root / "records")
    train_labels = partial_labels(NUM_TRAIN, 0, unseen_positives=False)
    train_labels[5, :6] = [1, 1, 1, 1, -1, 0]  # the most seen positives of one image
    convert(records, "train", train_labels, 0, num_shards=4)
    convert(records, "test", partial_labels(NUM_TEST, 1, unseen_positives=True), 100, num_shards=2)
    # The lists pipelines.to_tfrecord writes (importing it would define its flags beside the train command's).
    (root / "records" / "tags.txt").write_text("".join(f"{t}\n" for t in TAGS))
    (root / "records" / "unseen_tags.txt").write_text("".join(f"{t}\n" for t in UNSEEN))
    vectors = np.random.default_rng(2).standard_normal((len(TAGS), 6)).astype(np.float32)
    np.savez(root / "vectors.npz", tags=np.array(TAGS), vectors=vectors)
    return {"root": root, "records": records, "train_labels": train_labels, "vectors": str(root / "vectors.npz")}


def records_config(data, output_dir, **overrides):
    values = dict(
        dataset="tfrecord", train_source=data["records"], test_source=data["records"],
        validation_source=data["records"],  # records are not held out of: the test shards stand in
        tags=os.path.join(data["records"], "tags.txt"), unseen_tags=os.path.join(data["records"], "unseen_tags.txt"),
        word_vectors=data["vectors"], backbone="small_cnn", image_size=32, num_rows=2, batch_size=BATCH, epochs=2,
        learning_rate=1e-3, jit_compile=False, dashboard_images=2, output_dir=output_dir, verbose=0,
    )
    values.update(overrides)
    return TrainConfig.from_flat(**values)


class StepCounter(keras.callbacks.Callback):
    steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def test_trains_from_records_and_evaluates_them(data, tmp_path):
    run_dir = str(tmp_path / "run")
    counter = StepCounter()
    model, history, vocabulary = training.train(records_config(data, run_dir), callbacks=[counter])
    # 40 records counted at conversion, batches of 8: 5 steps per epoch.
    assert counter.steps == 2 * NUM_TRAIN // BATCH
    assert model.loss.max_positives == MOST_SEEN_POSITIVES
    assert np.isfinite(history.history["loss"]).all() and "val_zsl/mAP" in history.history
    assert {"model.keras", "vocabulary.npz", "config.json", "metrics.json"} <= set(os.listdir(run_dir))
    assert json.load(open(os.path.join(run_dir, "metrics.json")))["step"] == 2 * NUM_TRAIN // BATCH
    assert TrainConfig.load(os.path.join(run_dir, "config.json")).data.dataset == "tfrecord"
    assert vocabulary.unseen_tags == UNSEEN
    # sdl_keras.evaluate's path reads the test records, all 12, with their unseen tags.
    results = inference.evaluate_run(run_dir, progress=False)
    assert np.isfinite(results["model"]["zsl/mAP"]) and np.isfinite(results["model"]["gzsl/mAP"])
    batches, count = split_batches("tfrecord", data["records"], "test", vocabulary.tags, vocabulary.unseen_tags, 32, 5)
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert count == NUM_TEST and labels.shape == (NUM_TEST, len(TAGS)) and (labels[:, 6:] == 1).any(axis=1).all()


def test_trains_from_a_beam_conversion(data, tmp_path):
    from pipelines.tfrecord import beam

    # The fixture's train images and labels, converted as an Apache Beam pipeline.
    images = LabeledImages([os.path.join(data["root"], f"{i}.jpg") for i in range(NUM_TRAIN)],
                           [f"train{i}" for i in range(NUM_TRAIN)], data["train_labels"])
    records = tmp_path / "beam_records"
    beam.convert(images, str(records), "train", ["--runner=DirectRunner"], num_shards=4,
                 metadata={"tags_sha1": tags_sha1(TAGS)}, unseen=(6, 7))
    for name in ("tags.txt", "unseen_tags.txt"):
        shutil.copy(os.path.join(data["records"], name), records / name)
    expected, found = (record_sets.open_record_set(str(folder), "train") for folder in (data["records"], records))
    assert (found.num_examples, found.max_seen_positives, found.unseen_sha1) == (
        expected.num_examples, expected.max_seen_positives, expected.unseen_sha1)
    counter = StepCounter()
    model, history, _ = training.train(
        records_config(data, str(tmp_path / "run"), train_source=str(records), test_source="", epochs=1),
        callbacks=[counter])
    assert counter.steps == NUM_TRAIN // BATCH and model.loss.max_positives == MOST_SEEN_POSITIVES
    assert np.isfinite(history.history["loss"]).all()


def test_only_the_seen_columns_reach_the_loss(data):
    config = records_config(data, "unused")
    vocabulary = load_vocabulary(config.data)
    train_data = training_data(config, vocabulary, tf.distribute.get_strategy())
    assert (train_data.num_images, train_data.num_seen) == (NUM_TRAIN, 6)
    assert train_data.max_positives == MOST_SEEN_POSITIVES
    assert "seen tags" in train_data.max_positives_from
    images, labels = next(iter(train_data.dataset))
    assert images.shape == (BATCH, 32, 32, 3) and labels.shape == (BATCH, 6)
    rows = {tuple(row) for row in data["train_labels"][:, SEEN_COLUMNS]}
    assert all(tuple(row) in rows for row in labels.numpy())
    # One pass (5 batches) holds every record once: the shuffle spans the shards.
    seen = np.concatenate([y.numpy() for _, y in train_data.dataset.take(NUM_TRAIN // BATCH)])
    assert sorted(map(tuple, seen)) == sorted(map(tuple, data["train_labels"][:, SEEN_COLUMNS]))


def test_max_positives_flag_overrides_the_statistics(data, tmp_path):
    from absl import flags

    from sdl_keras import cli

    run_dir = tmp_path / "cli"
    argv = ["train", "--dataset=tfrecord", f"--train_source={data['records']}", "--test_source=",
            f"--tags={data['records']}/tags.txt", f"--unseen_tags={data['records']}/unseen_tags.txt",
            f"--word_vectors={data['vectors']}", "--backbone=small_cnn", "--image_size=32", "--num_rows=2",
            f"--batch_size={BATCH}", "--epochs=1", "--steps_per_epoch=2", "--max_positives=9", "--nojit_compile",
            "--verbose=0", f"--output_dir={run_dir}"]
    # The train command's flags (sdl_keras.train), in their own FlagValues: other test files
    # in the same process may define flags of the same names.
    flag_values = flags.FlagValues()
    cli.define_config_flags(TrainConfig, flag_values)
    flag_values(argv)
    training.train(cli.config_from_flags(TrainConfig, flag_values))
    restored = keras.saving.load_model(run_dir / "model.keras")
    assert restored.loss.max_positives == 9
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 2
    with pytest.raises(ValueError, match=r"max_positives=3, but .*train-progress.jsonl.* 4 positive seen tags"):
        training.train(records_config(data, str(tmp_path / "small"), max_positives=3))


def test_a_vocabulary_other_than_the_records_is_an_error_naming_the_file(data, tmp_path):
    reordered = tmp_path / "reordered.txt"
    reordered.write_text("\n".join([TAGS[1], TAGS[0], *TAGS[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"train-conversion.json: .*another tag list or order.*tag 1 is 'cat' "
                                         r"there, 'dog' in the vocabulary.*--tags=.*records/tags.txt"):
        training.train(records_config(data, str(tmp_path / "a"), tags=str(reordered)))
    shorter = tmp_path / "shorter.txt"
    shorter.write_text("\n".join(TAGS[:-1]) + "\n")
    vectors = np.load(data["vectors"])
    np.savez(tmp_path / "v.npz", tags=vectors["tags"][:-1], vectors=vectors["vectors"][:-1])
    with pytest.raises(ValueError, match=r"train-conversion.json: the train records hold labels over 8 tags, "
                                         r"the vocabulary has 7"):
        training.train(records_config(data, str(tmp_path / "b"), tags=str(shorter), unseen_tags="",
                                      word_vectors=str(tmp_path / "v.npz")))


def copy_records(data, folder, edit_progress=None):
    shutil.copytree(data["records"], folder)
    if edit_progress is not None:
        path = os.path.join(folder, "train-progress.jsonl")
        entries = [json.loads(line) for line in open(path)]
        with open(path, "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in edit_progress(entries))
    return str(folder)


def test_older_or_unfinished_conversions_give_clear_errors(data, tmp_path):
    def without_statistics(entries):
        return [{k: e[k] for k in ("shard", "written", "skipped")} for e in entries]

    old = copy_records(data, tmp_path / "old", without_statistics)
    config = records_config(data, str(tmp_path / "run"), train_source=old)
    vocabulary = load_vocabulary(config.data)
    strategy = tf.distribute.get_strategy()
    with pytest.raises(ValueError, match=r"old/train-progress.jsonl records no positives statistics.*--max_positives"):
        training_data(config, vocabulary, strategy)
    config = config.replace(max_positives=5)
    assert training_data(config, vocabulary, strategy).num_images == NUM_TRAIN

    unfinished = copy_records(data, tmp_path / "unfinished", lambda entries: entries[:-1])
    with pytest.raises(ValueError, match=r"train-00003-of-00004.tfrecord is not listed as finished in .*rerun"):
        record_sets.open_record_set(unfinished, "train")
    os.remove(os.path.join(unfinished, "train-00003-of-00004.tfrecord"))
    with pytest.raises(ValueError, match=r"holds 3 of the 4 train shards"):
        record_sets.open_record_set(unfinished, "train")
    # A glob may pick some shards: they are counted from the progress file.
    subset = record_sets.open_record_set(os.path.join(unfinished, "train-0000[01]-of-00004.tfrecord"), "train")
    assert subset.num_examples == 20 and subset.split == "train"
    with pytest.raises(FileNotFoundError, match="holds no validation shards"):
        record_sets.open_record_set(unfinished, "validation")


def test_unseen_positives_in_training_records_are_refused(data, tmp_path):
    leaky = partial_labels(16, 3, unseen_positives=True)
    convert(str(tmp_path / "stats"), "train", leaky, 200, num_shards=2)
    records = record_sets.open_record_set(str(tmp_path / "stats"), "train")
    with pytest.raises(ValueError, match=r"stats/train-progress.jsonl: 16 train record\(s\) are labelled with an "
                                         "unseen tag"):
        record_sets.positives_bound(records, [6, 7])
    # Converted without the unseen tags: the all-tags bound, and the batches catch the leak.
    convert(str(tmp_path / "no_stats"), "train", leaky, 200, num_shards=2, unseen=None)
    records = record_sets.open_record_set(str(tmp_path / "no_stats"), "train")
    bound, seen_only, why = record_sets.positives_bound(records, [6, 7])
    assert bound == int((leaky == 1).sum(axis=1).max()) and not seen_only and "not told the unseen" in why
    dataset = record_sets.training_dataset(records, SEEN_COLUMNS, [6, 7], 32, 4, max_positives=bound)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labelled with an unseen tag"):
        next(iter(dataset))
    # Too many positives for the bound also stops the stream.
    dataset = record_sets.training_dataset(records, list(range(8)), [], 32, 16, max_positives=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more seen positives than max_positives=1"):
        next(iter(dataset))


def test_a_damaged_shard_is_skipped_and_counted_or_with_strict_an_error_naming_it(data, tmp_path, caplog):
    damaged = copy_records(data, tmp_path / "damaged")
    shard = os.path.join(damaged, "train-00001-of-00004.tfrecord")
    testing.damage_record(shard, 2)
    config = records_config(data, str(tmp_path / "run"), train_source=damaged, test_source="", epochs=2,
                            steps_per_epoch=2)
    with caplog.at_level(logging.WARNING):
        _, history, _ = training.train(config)
    # TFRecordDataset cannot read past a damaged record: 8 of the shard's 10 are lost each pass.
    counts = history.history["unreadable_records"]
    assert len(counts) == 2 and counts[0] >= 8 and all(c % 8 == 0 for c in counts), counts
    assert (f"Epoch 1: {counts[0]} unreadable TFRecord record(s) skipped ({counts[0]} in all): "
            f"train-00001-of-00004.tfrecord (8 of its 10 records a pass) in {damaged}: delete the shard and rerun "
            f"the pipelines.to_tfrecord command that wrote it (python -m pipelines.to_tfrecord --split=train "
            f"--output_dir={damaged} ...): it resumes, writing only the missing shards.") in caplog.text

    # With --strict, training ends at the first damaged record (sdl_keras.train prints the
    # message as "sdl_keras.train: error: ...", exit status 1), and the evaluation never skips.
    with pytest.raises(record_sets.UnreadableShardError) as error:
        training.train(config.replace(strict=True, output_dir=str(tmp_path / "strict")))
    assert str(error.value) == (
        f"{shard}: record 3 cannot be read (corrupted or truncated; the conversion wrote 10 records): delete the "
        f"shard and rerun the pipelines.to_tfrecord command that wrote it (python -m pipelines.to_tfrecord "
        f"--split=train --output_dir={damaged} ...): it resumes, writing only the missing shards.")
    record_set = record_sets.open_record_set(damaged, "train")
    with pytest.raises(record_sets.UnreadableShardError, match="train-00001-of-00004.tfrecord: record 3 cannot be"):
        with record_sets.raising_unreadable_shards():
            list(record_sets.evaluation_batches(record_set, 32, BATCH))

    # As the message says: the conversion, rerun, writes the deleted shard again, and only it.
    others = {name: os.path.getmtime(os.path.join(damaged, name)) for name in os.listdir(damaged) if "-0000" in name}
    os.remove(shard)
    convert(damaged, "train", data["train_labels"], 0, num_shards=4)
    assert all(os.path.getmtime(os.path.join(damaged, name)) == mtime for name, mtime in others.items()
               if name != os.path.basename(shard))
    labels = np.concatenate([y for _, y in record_sets.evaluation_batches(record_set, 32, BATCH).as_numpy_iterator()])
    assert sorted(map(tuple, labels)) == sorted(map(tuple, data["train_labels"]))


def test_mirrored_strategy_reads_per_replica_batches(data, tmp_path):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        pytest.skip("two logical CPUs need this file to run alone (as under Bazel)")
    config = records_config(data, str(tmp_path / "mirrored"), strategy="mirrored", epochs=1, xla_mode="off",
                            test_source="")
    strategy = distribute.select_strategy("mirrored")
    vocabulary = load_vocabulary(config.data)
    train_data = training_data(config, vocabulary, strategy)
    images, labels = next(iter(train_data.dataset))
    assert [tuple(x.shape) for x in strategy.experimental_local_results(labels)] == [(BATCH // 2, 6)] * 2
    counter = StepCounter()
    training.train(config, callbacks=[counter])
    assert counter.steps == NUM_TRAIN // BATCH
    assert os.path.exists(tmp_path / "mirrored" / "model.keras")


if __name__ == "__main__":
    testing.run(__file__)
