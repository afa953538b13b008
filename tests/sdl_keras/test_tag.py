"""Offline tagging: the CLI on the six real NUS-WIDE photos, bad images beside good ones,
CSV and JSON lines, annotated figures, and finding models and images."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from PIL import Image

from sdl_keras import saved_model as export, tagging as tag
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    base = tmp_path_factory.mktemp("tag") / "tiny"
    tiny.export_tiny(base)
    return base


@pytest.fixture(scope="module")
def photos():
    folder = testing.shared_path("reference", "images")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))]


@pytest.fixture(scope="module")
def tagger(base_path):
    return tag.Tagger(str(base_path))


@pytest.fixture
def bad_images(tmp_path, photos):
    """A zero-byte file, and a JPEG with an intact header but half its data."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    with open(photos[0], "rb") as f:
        data = f.read()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return [str(folder / "empty.jpg"), str(folder / "truncated.jpg")]


def test_cli_tags_the_real_photos_writes_csv_and_annotates(base_path, photos, bad_images, tmp_path, tagger):
    out, figures = tmp_path / "tags.csv", tmp_path / "figures"
    ran = subprocess.run(
        [sys.executable, "-m", "sdl_keras.tag", f"--flagfile={testing.REPO_ROOT}/configs/tag.flags",
         f"--model={base_path}", f"--output={out}", f"--annotate={figures}", "--batch_size=4",
         os.path.dirname(photos[0]), os.path.dirname(bad_images[0])],
        capture_output=True, text=True, env=testing.python_env(), timeout=300,
    )
    assert ran.returncode == 1, ran.stderr[-3000:]  # two images failed, and the exit code says so
    assert "8/8 images, 2 failed" in ran.stderr and "Tagged 6 of 8 images" in ran.stderr
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == photos + bad_images
    reference = tagger([open(p, "rb").read() for p in photos])
    for row, expected in zip(rows, reference):
        assert row["tags"].split(";") == expected["tags"] and not row["error"]
        assert [int(x) for x in row["unseen"].split(";")] == [int(u) for u in expected["unseen"]]
    assert rows[6]["error"].endswith("empty.jpg is empty (0 bytes)")
    assert "truncated.jpg cannot be decoded" in rows[7]["error"]

    written = sorted(os.listdir(figures))
    assert written == sorted(os.path.splitext(os.path.basename(p))[0] + ".png" for p in photos)
    with Image.open(photos[0]) as photo, Image.open(figures / written[0]) as figure:
        assert figure.width > photo.width and figure.height >= photo.height
        # The tag panel is not blank: text was drawn beside the photo.
        panel = figure.crop((figure.width - 200, 0, figure.width, figure.height)).convert("L")
        assert panel.getextrema()[0] < 128


def test_a_bad_image_does_not_fail_its_batch(tagger, photos, bad_images):
    files = [photos[0], bad_images[1], photos[1], bad_images[0], photos[2]]
    records = list(tag.tag_files(tagger, files, batch_size=5))
    assert [r["image"] for r in records] == files
    assert ["error" in r for r in records] == [False, True, False, True, False]
    alone = tagger([open(photos[1], "rb").read()])[0]
    assert records[2]["tags"] == alone["tags"]
    assert records[2]["scores"] == pytest.approx(alone["scores"], rel=1e-5)


def test_jsonl_records(tagger, photos, tmp_path):
    with open(tmp_path / "out.jsonl", "w") as stream:
        assert tag.write_records(tag.tag_files(tagger, photos[:2]), stream, "jsonl") == 0
    lines = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [line["image"] for line in lines] == photos[:2]
    assert all(len(line[k]) == tiny.TOP_K for line in lines for k in tag.OUTPUT_FIELDS)
    assert all(t in tiny.TAGS for line in lines for t in line["tags"])
    assert all(u == (t in tiny.UNSEEN) for line in lines for t, u in zip(line["tags"], line["unseen"]))


def test_model_folder_resolves_to_its_newest_version(base_path, tmp_path):
    assert export.resolve_version_dir(str(base_path)) == str(base_path / "1")
    assert export.resolve_version_dir(str(base_path / "1")) == str(base_path / "1")
    shutil.copytree(base_path / "1", tmp_path / "m" / "7")
    (tmp_path / "m" / "12").mkdir()  # a version folder still being written: no saved_model.pb
    assert export.resolve_version_dir(str(tmp_path / "m")) == str(tmp_path / "m" / "7")
    with pytest.raises(FileNotFoundError, match="neither a SavedModel nor a folder of version folders"):
        export.resolve_version_dir(str(tmp_path))
    assert tf.saved_model.contains_saved_model(export.resolve_version_dir(str(base_path)))


def test_find_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.JPG", "a/b/y.png", "a/notes.txt", "a/z.gif"):
        (tmp_path / name).write_bytes(b"")
    found = tag.find_images([str(tmp_path / "a"), str(tmp_path / "a" / "notes.txt")])
    assert [os.path.relpath(p, tmp_path) for p in found] == ["a/x.JPG", "a/z.gif", "a/b/y.png", "a/notes.txt"]
    with pytest.raises(FileNotFoundError, match="No such image file or folder: .*missing.jpg"):
        tag.find_images([str(tmp_path / "missing.jpg")])


if __name__ == "__main__":
    testing.run(__file__)
