"""TFRecord conversion: the record format round trip, bad images at conversion, sharding,
resuming after a kill, and the to_tfrecord command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.decode import UnreadableImageError
from pipelines.tfrecord import convert as conversion
from pipelines.tfrecord import format as record_format
from pipelines.readers.manifest import LabeledImages, write_manifest
from tests import testing


def smooth_image(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
    return small.resize(size, Image.BILINEAR)


def bad_and_good_files(folder):
    """Every kind of file the converter meets: good ones of each format and bad ones."""
    rgb = smooth_image(0)
    jpeg = testing.encode_image(rgb, "JPEG", quality=95)
    return testing.write_files(folder, [
        ("rgb.jpg", jpeg),
        ("gray.jpg", testing.encode_image(rgb.convert("L"), "JPEG")),
        ("cmyk.jpg", testing.encode_image(rgb.convert("CMYK"), "JPEG")),
        ("image.png", testing.encode_image(rgb.convert("RGBA"), "PNG")),
        ("image.gif", testing.encode_image(rgb, "GIF")),
        ("image.bmp", testing.encode_image(rgb, "BMP")),
        ("image.tiff", testing.encode_image(rgb, "TIFF")),
        ("truncated.jpg", jpeg[: len(jpeg) // 2]),
        ("corrupt.jpg", jpeg[:200] + bytes(range(256)) * 4),
        ("empty.jpg", b""),
        ("text.jpg", b"not an image at all"),
        ("missing.jpg", None),
    ])


def test_labels_round_trip_exactly():
    rng = np.random.default_rng(0)
    for default in (0.0, -1.0, 1.0):
        labels = rng.choice([1.0, 0.0, -1.0], size=37)
        labels[rng.random(37) < 0.6] = default
        serialized = record_format.make_example(b"\xff\xd8\xffdata", "id/7", labels)
        data, parsed, image_id = record_format.parse_example(tf.constant(serialized), 37)
        np.testing.assert_array_equal(parsed.numpy(), labels)
        assert data.numpy() == b"\xff\xd8\xffdata" and image_id.numpy() == b"id/7"
    with pytest.raises(tf.errors.InvalidArgumentError, match="label/num_classes differs from the 36 tags"):
        record_format.parse_example(tf.constant(serialized), 36)
    with pytest.raises(ValueError, match="labels must be 1, 0 or -1"):
        record_format.make_example(b"", "x", [0.5, 1.0])


def test_prepare_image_keeps_jpegs_reencodes_others_and_rejects_bad_files(tmp_path):
    paths = bad_and_good_files(str(tmp_path))
    results = {}
    for path in paths:
        try:
            results[os.path.basename(path)] = conversion.prepare_image(path)
        except UnreadableImageError as error:
            assert error.path == path and path in str(error)
            results[os.path.basename(path)] = error.reason
    for name in ("rgb.jpg", "gray.jpg", "cmyk.jpg"):  # JPEGs TensorFlow decodes: stored as they are
        assert results[name] == open(tmp_path / name, "rb").read()
    reference = tf.io.decode_jpeg(results["rgb.jpg"], channels=3).numpy().astype(float)
    for name in ("image.png", "image.gif", "image.bmp", "image.tiff"):  # re-encoded as JPEG
        assert results[name][:3] == b"\xff\xd8\xff"
        decoded = tf.io.decode_jpeg(results[name], channels=3).numpy().astype(float)
        assert decoded.shape == reference.shape and np.abs(decoded - reference).mean() < 6
    assert results["empty.jpg"] == "zero-byte file"
    assert "No such file" in results["missing.jpg"]
    for name in ("truncated.jpg", "corrupt.jpg", "text.jpg"):
        assert results[name].startswith("cannot decode"), (name, results[name])
    big = tmp_path / "big.jpg"
    big.write_bytes(testing.encode_image(smooth_image(1, (300, 200)), "JPEG"))
    assert tf.io.extract_jpeg_shape(conversion.prepare_image(str(big), max_side=150)).numpy().tolist() == [100, 150, 3]


def labeled(paths, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice([1.0, 0.0, -1.0], size=(len(paths), num_classes)).astype(np.float32)
    return LabeledImages(list(paths), [f"id{i}" for i in range(len(paths))], labels)


def read_records(pattern, num_classes):
    out = {}
    for path in sorted(tf.io.gfile.glob(pattern)):
        for serialized in tf.data.TFRecordDataset(path):
            data, labels, image_id = record_format.parse_example(serialized, num_classes)
            out[image_id.numpy().decode()] = (data.numpy(), labels.numpy())
    return out


def test_convert_writes_shards_and_lists_skipped_images(tmp_path):
    paths = bad_and_good_files(str(tmp_path))
    images = labeled(paths)
    out = str(tmp_path / "records")
    summary = conversion.convert(images, out, "train", num_shards=3, workers=2)
    assert summary.num_shards == 3 and summary.num_examples == 7
    assert [os.path.basename(p) for p, _ in summary.skipped] == [
        "truncated.jpg", "corrupt.jpg", "empty.jpg", "text.jpg", "missing.jpg"]
    assert sorted(os.listdir(out)) == [
        "train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord",
        "train-conversion.json", "train-info.json", "train-progress.jsonl"]
    records = read_records(record_format.shard_pattern(out, "train"), 5)
    assert sorted(records) == [f"id{i}" for i in range(7)]
    for i in range(7):
        np.testing.assert_array_equal(records[f"id{i}"][1], images.labels[i])
    info = json.load(open(os.path.join(out, "train-info.json")))
    assert info["num_examples"] == 7 and len(info["skipped"]) == 5
    with pytest.raises(UnreadableImageError, match="truncated.jpg"):
        conversion.convert(images, str(tmp_path / "strict"), "train", num_shards=3, strict=True)
    # Shard 0 was complete; shard 1 holds truncated.jpg and was never written, not even in part.
    assert sorted(n for n in os.listdir(tmp_path / "strict") if "tfrecord" in n) == ["train-00000-of-00003.tfrecord"]


def test_a_killed_conversion_resumes_without_redoing_finished_shards(tmp_path):
    paths = testing.write_files(str(tmp_path), [(f"{i}.jpg", testing.encode_image(smooth_image(i), "JPEG")) for i in range(8)])
    images = labeled(paths)
    out = str(tmp_path / "records")

    class Killed(Exception):
        pass

    def kill_after_two_shards(done, total):
        if done >= 4:
            raise Killed()

    with pytest.raises(Killed):
        conversion.convert(images, out, "train", num_shards=4, progress=kill_after_two_shards)
    first = [record_format.shard_path(out, "train", k, 4) for k in range(2)]
    stamps = [os.stat(p).st_mtime_ns for p in first]
    # A kill in the middle of shard 2 leaves a temporary file and a torn progress line.
    open(record_format.shard_path(out, "train", 2, 4) + ".tmp-999", "wb").write(b"partial")
    with open(os.path.join(out, "train-progress.jsonl"), "a") as f:
        f.write('{"shard": 2, "wri')
    calls = []
    summary = conversion.convert(images, out, "train", num_shards=4, progress=lambda d, t: calls.append(d))
    assert calls == [4, 6, 8]  # shards 0 and 1 were not redone
    assert [os.stat(p).st_mtime_ns for p in first] == stamps
    assert summary.num_examples == 8 and not [n for n in os.listdir(out) if ".tmp-" in n]
    assert sorted(read_records(record_format.shard_pattern(out, "train"), 5)) == [f"id{i}" for i in range(8)]
    with pytest.raises(ValueError, match="num_shards differ"):
        conversion.convert(images, out, "train", num_shards=2)


def test_each_shard_records_its_positives_statistics(tmp_path):
    paths = testing.write_files(str(tmp_path), [(f"{i}.jpg", testing.encode_image(smooth_image(i), "JPEG")) for i in range(6)])
    paths[4] = str(tmp_path / "missing.jpg")  # skipped: its labels count for nothing
    labels = np.array([
        [1, 0, -1, -1, 0],
        [1, 1, 0, -1, 1],   # 3 positives, 2 of them seen (column 4 is unseen)
        [0, 0, 0, 0, 0],
        [-1, 1, 1, 1, 0],   # 3 seen positives
        [1, 1, 1, 1, 1],    # missing file
        [1, -1, -1, -1, -1],
    ], np.float32)
    images = LabeledImages(paths, [f"id{i}" for i in range(6)], labels)
    summary = conversion.convert(images, str(tmp_path / "records"), "train", num_shards=3, unseen=[4])
    with open(tmp_path / "records" / "train-progress.jsonl") as f:
        entries = {e["shard"]: e for e in map(json.loads, f)}
    digest = record_format.columns_sha1([4])
    assert [(e["written"], e["max_positives"], e["max_seen_positives"], e["unseen_positive_images"], e["unseen_sha1"])
            for _, e in sorted(entries.items())] == [(2, 3, 2, 1, digest), (2, 3, 3, 0, digest), (1, 1, 1, 0, digest)]
    expected = {"max_positives": 3, "max_seen_positives": 3, "unseen_positive_images": 1, "unseen_sha1": digest}
    assert summary.statistics == expected
    info = json.load(open(tmp_path / "records" / "train-info.json"))
    assert {k: info[k] for k in expected} == expected
    # Without the unseen columns only the all-tags bound is kept.
    plain = conversion.convert(images, str(tmp_path / "plain"), "train", num_shards=3)
    assert plain.statistics == {"max_positives": 3}
    assert record_format.columns_sha1([4, 1, 4]) == record_format.columns_sha1([1, 4]) != record_format.columns_sha1([1])
    with pytest.raises(ValueError, match=r"Unseen columns must lie in \[0, 5\)"):
        conversion.convert(images, str(tmp_path / "bad"), "train", unseen=[5])


def test_statistics_of_mixed_progress_entries():
    new = {"written": 3, "max_positives": 4, "max_seen_positives": 2, "unseen_positive_images": 0, "unseen_sha1": "a"}
    assert record_format.positives_statistics([new, dict(new, max_positives=6, max_seen_positives=5)]) == {
        "max_positives": 6, "max_seen_positives": 5, "unseen_positive_images": 0, "unseen_sha1": "a"}
    # Shards written by a converter that kept no statistics (a resumed older conversion): none.
    assert record_format.positives_statistics([new, {"written": 3}]) == {}
    # Seen-only counts against different unseen columns do not combine.
    assert record_format.positives_statistics([new, dict(new, unseen_sha1="b")]) == {"max_positives": 4}
    assert record_format.positives_statistics([new, {"written": 1, "max_positives": 7}]) == {"max_positives": 7}


def to_tfrecord(*flags):
    """Runs `python -m pipelines.to_tfrecord` as a user does; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.to_tfrecord", *flags], capture_output=True, text=True,
        env=testing.python_env(), cwd=testing.REPO_ROOT, timeout=240,
    )


def test_command_line_converts_a_manifest_and_writes_the_tag_lists(tmp_path):
    for i in range(4):
        smooth_image(i).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"broken")
    write_manifest(str(tmp_path / "m.jsonl"), [(f"{i}.png", ["cat"] if i % 2 else ["dog", "cat"]) for i in range(4)])
    (tmp_path / "tags.txt").write_text("cat\ndog\n")
    (tmp_path / "unseen.txt").write_text("dog\n")
    out = tmp_path / "records"
    argv = [f"--flagfile={os.path.join(testing.REPO_ROOT, 'configs', 'to_tfrecord.flags')}",
            "--dataset=manifest", f"--source={tmp_path / 'm.jsonl'}", "--split=test", f"--output_dir={out}",
            f"--tags={tmp_path / 'tags.txt'}", f"--unseen_tags={tmp_path / 'unseen.txt'}", "--num_shards=2"]
    done = to_tfrecord(*argv)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "Wrote 3 examples in 2 shards" in printed and "3.png" in printed
    assert (out / "tags.txt").read_text() == "cat\ndog\n" and (out / "unseen_tags.txt").read_text() == "dog\n"
    records = read_records(record_format.shard_pattern(str(out), "test"), 2)
    np.testing.assert_array_equal(records["0.png"][1], [1, 1])
    np.testing.assert_array_equal(records["1.png"][1], [1, 0])
    # The statistics count seen positives against the unseen list given (dog, column 1).
    info = json.load(open(out / "test-info.json"))
    assert (info["max_positives"], info["max_seen_positives"], info["unseen_positive_images"]) == (2, 1, 2)
    assert info["unseen_sha1"] == record_format.columns_sha1([1])
    assert info["tags_sha1"] == record_format.tags_sha1(["cat", "dog"])
    assert "At most 1 positive seen tags per image (2 in all)." in printed
    (tmp_path / "unseen.txt").write_text("dog\nbird\n")
    refused = to_tfrecord(*argv, f"--output_dir={tmp_path / 'other'}")
    assert refused.returncode == 1
    assert "unseen.txt: 1 unseen tag(s) not in the tag list (e.g. ['bird'])" in refused.stderr
    assert "Traceback" not in refused.stderr
    # A tag listed twice would leave a label column empty: an error naming its lines.
    (tmp_path / "twice.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"twice.txt: 1 tag\(s\) listed more than once: 'cat' \(lines 1, 3\)"):
        conversion.split_vocabulary("manifest", str(tmp_path / "m.jsonl"), str(tmp_path / "twice.txt"))


def test_open_images_labels_stream_into_records_sparse(tmp_path):
    (tmp_path / "train").mkdir()
    rows = [("a", "/m/1", 1), ("a", "/m/2", 0), ("b", "/m/3", 1), ("b", "/m/9", 1)]
    with open(tmp_path / "train-annotations-human-imagelabels.csv", "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n" + "".join(f"{i},verification,{m},{c}\n" for i, m, c in rows))
    for image_id in "ab":
        smooth_image(ord(image_id)).save(tmp_path / "train" / f"{image_id}.jpg")
    images = conversion.read_for_conversion(
        "open_images", str(tmp_path / "train-annotations-human-imagelabels.csv"), "train",
        ["/m/1", "/m/2", "/m/3", "/m/9"], ["/m/9"])
    assert not isinstance(images.labels, np.ndarray)  # sparse rows, never a dense matrix
    conversion.convert(images, str(tmp_path / "records"), "train", num_shards=1)
    records = read_records(record_format.shard_pattern(str(tmp_path / "records"), "train"), 4)
    np.testing.assert_array_equal(records["a"][1], [1, 0, -1, -1])
    np.testing.assert_array_equal(records["b"][1], [-1, -1, 1, -1])  # /m/9 is unseen: withheld


def test_command_line_writes_coco_tag_lists_from_the_real_split(tmp_path):
    split = testing.shared_path("reference", "coco", "split_48_17.json")
    done = to_tfrecord("--dataset=coco", f"--zero_shot_split={split}", f"--source={tmp_path}",
                       f"--output_dir={tmp_path}", "--vocabulary_only")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "tags.txt").read_text().splitlines()) == 65
    assert len((tmp_path / "unseen_tags.txt").read_text().splitlines()) == 17
    assert not list(tmp_path.glob("*.tfrecord"))


if __name__ == "__main__":
    testing.run(__file__)
