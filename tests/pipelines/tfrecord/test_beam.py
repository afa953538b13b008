"""`pipelines.to_tfrecord --runner=DirectRunner`: the Beam conversion writes the records the
one-process converter writes (shard by shard), its progress statistics, info file and tag
lists; unreadable images are a Beam metric and a side output, listed as the converter lists
them; a rerun skips the verified shards and rewrites the others."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines.readers.manifest import LabeledImages, write_manifest
from pipelines.tfrecord import beam
from pipelines.tfrecord import convert as conversion
from pipelines.tfrecord import format as record_format
from tests import testing
from tests.pipelines.tfrecord.test_tfrecord import bad_and_good_files, read_records, smooth_image

TAGS = ["cat", "dog", "car", "sky"]
IN_PROCESS = ["--runner=DirectRunner"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """20 files (5 unreadable) with labels over 4 tags, "sky" unseen, as a manifest too."""
    folder = tmp_path_factory.mktemp("images")
    paths = bad_and_good_files(str(folder))
    for i in range(8):
        smooth_image(100 + i).save(folder / f"extra{i}.jpg")
        paths.append(str(folder / f"extra{i}.jpg"))
    tags = [[TAGS[i % 4]] + ([TAGS[(i + 1) % 4]] if i % 3 else []) for i in range(len(paths))]
    write_manifest(str(folder / "images.jsonl"), list(zip(paths, tags)))
    (folder / "tags.txt").write_text("".join(f"{t}\n" for t in TAGS))
    (folder / "unseen.txt").write_text("sky\n")
    labels = np.array([[1.0 if t in row else 0.0 for t in TAGS] for row in tags], np.float32)
    return folder, LabeledImages(paths, paths, labels)


def shard_records(path):
    import tensorflow as tf

    return [tuple(t.numpy() for t in record_format.parse_example(r, len(TAGS))) for r in tf.data.TFRecordDataset(path)]


def progress_entries(folder, split):
    with open(os.path.join(folder, f"{split}-progress.jsonl")) as f:
        return {entry["shard"]: entry for entry in map(json.loads, f)}


def test_beam_conversion_writes_the_converters_records_and_files(images, tmp_path):
    folder, _ = images
    # What the command converts: the manifest as its reader reads it.
    labeled = conversion.read_for_conversion("manifest", str(folder / "images.jsonl"), "test", TAGS, ["sky"])
    reference = conversion.convert(labeled, str(tmp_path / "plain"), "test", num_shards=4, unseen=[3],
                                   metadata={"dataset": "manifest", "source": str(folder / "images.jsonl"),
                                             "tags_sha1": record_format.tags_sha1(TAGS)})
    out = tmp_path / "beam"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.to_tfrecord", "--dataset=manifest", f"--source={folder}/images.jsonl",
         "--split=test", f"--output_dir={out}", f"--tags={folder}/tags.txt", f"--unseen_tags={folder}/unseen.txt",
         "--num_shards=4", *IN_PROCESS], capture_output=True, text=True, env=testing.python_env(),
        cwd=testing.REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Wrote 15 examples in 4 shards" in done.stdout and "Skipped 5 unreadable image(s)" in done.stdout
    assert "counted 5 unreadable images" in done.stderr  # the Beam metric
    assert (out / "tags.txt").read_text() == "".join(f"{t}\n" for t in TAGS)
    assert (out / "unseen_tags.txt").read_text() == "sky\n"
    # The same records, shard by shard, in the same order (the bytes of an Example's feature
    # map may be ordered differently by another process).
    for k in range(4):
        found, expected = (shard_records(record_format.shard_path(str(folder), "test", k, 4))
                           for folder in (out, tmp_path / "plain"))
        assert len(found) == len(expected) > 0
        for (image, labels, image_id), (want_image, want_labels, want_id) in zip(found, expected):
            assert (image, image_id) == (want_image, want_id)
            np.testing.assert_array_equal(labels, want_labels)
    assert progress_entries(out, "test") == progress_entries(tmp_path / "plain", "test")
    info, plain_info = (json.loads((path / "test-info.json").read_text()) for path in (out, tmp_path / "plain"))
    assert info == plain_info and len(info["skipped"]) == 5 and info["num_examples"] == reference.num_examples == 15
    assert json.loads((out / "test-conversion.json").read_text()) == json.loads(
        (tmp_path / "plain" / "test-conversion.json").read_text())


def test_a_rerun_skips_verified_shards_and_rewrites_the_others(images, tmp_path):
    _, labeled = images
    out = str(tmp_path / "records")
    first = beam.convert(labeled, out, "train", IN_PROCESS, num_shards=4, unseen=[3])
    paths = [record_format.shard_path(out, "train", k, 4) for k in range(4)]
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    # Shard 1 is cut short (its size is not the recorded one), shard 2 is gone, shard 3's
    # progress line was torn by a kill: those three are rewritten, shard 0 is kept.
    with open(paths[1], "r+b") as f:
        f.truncate(os.path.getsize(paths[1]) // 2)
    os.remove(paths[2])
    progress = os.path.join(out, "train-progress.jsonl")
    lines = open(progress).read().splitlines()
    kept = [line for line in lines if json.loads(line)["shard"] != 3]
    open(progress, "w").write("\n".join(kept) + '\n{"shard": 3, "wri')
    second = beam.convert(labeled, out, "train", IN_PROCESS, num_shards=4, unseen=[3])
    assert os.stat(paths[0]).st_mtime_ns == stamps[0]
    assert all(os.stat(p).st_mtime_ns != s for p, s in zip(paths[1:], stamps[1:]))
    assert (second.num_examples, second.skipped, second.statistics) == (15, first.skipped, first.statistics)
    assert sorted(read_records(record_format.shard_pattern(out, "train"), 4)) == sorted(
        p for p in labeled.paths if os.path.basename(p) not in
        ("truncated.jpg", "corrupt.jpg", "empty.jpg", "text.jpg", "missing.jpg"))
    # Nothing left to do: a third run writes nothing.
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    beam.convert(labeled, out, "train", IN_PROCESS, num_shards=4, unseen=[3])
    assert [os.stat(p).st_mtime_ns for p in paths] == stamps


def test_strict_stops_at_the_first_unreadable_image(images, tmp_path):
    _, labeled = images
    with pytest.raises(Exception, match="truncated.jpg|corrupt.jpg|empty.jpg|text.jpg|missing.jpg"):
        beam.convert(labeled, str(tmp_path / "strict"), "train", IN_PROCESS, num_shards=2, strict=True)


if __name__ == "__main__":
    testing.run(__file__)
