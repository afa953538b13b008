"""Calibration as a user runs it, one process per command, on one model trained on the demo
data (configs/demo.flags, which calibrates on the demo's validation split when training
ends): probabilities that mean what they say on the test split, the exported graph's
probabilities equal to the Python calibration's, tag --threshold, the query's probability
filter, the reliability diagrams in TensorBoard, and python -m sdl_keras.calibrate."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from sdl_keras import calibration as cal, saved_model as export
from sdl_keras.retrieval import RetrievalIndex, tag_query
from sdl_keras.run_dir import RunDirectory
from tests import testing

# Measured on the 2-core machine: ~30 s of training (~75 s with the machine loaded); a model
# at about 40 GZSL mAP (the full demo reaches 56) whose probabilities are worth calibrating.
DATA = DemoConfig(num_train=1600, num_test=300, num_validation=300, image_size=32, max_objects=3)
TRAIN = ("--image_size=32", "--epochs=6", "--batch_size=32", "--eval_every=0", "--verbose=0")


def command(module, *args, cwd):
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=testing.python_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A user's folder: the demo data, `train --flagfile=configs/demo.flags` (calibrated at the
    end), `evaluate --flagfile=configs/demo_eval.flags` and `export --flagfile=configs/export.flags`."""
    folder = tmp_path_factory.mktemp("user")
    os.symlink(os.path.join(testing.REPO_ROOT, "configs"), folder / "configs")
    files = make_demo_dataset(str(folder / "data" / "demo"), DATA)
    command("sdl_keras.train", "--flagfile=configs/demo.flags", *TRAIN, cwd=folder)
    evaluated = command("sdl_keras.evaluate", "--flagfile=configs/demo_eval.flags", cwd=folder)
    exported = command("sdl_keras.export", "--flagfile=configs/export.flags", cwd=folder)
    return {"folder": folder, "files": files, "run": RunDirectory(folder / "runs" / "demo"),
            "evaluated": evaluated.stdout, "exported": exported.stdout, "model": folder / "saved_models" / "demo" / "1"}


def test_calibrated_probabilities_mean_what_they_say_on_the_test_split(trained):
    run = trained["run"]
    calibration = run.calibration(run.vocabulary())
    # Fitted on the validation split, never the test split.
    assert calibration.fitted_on["validation"] == "data/demo/validation.jsonl"
    assert calibration.fitted_on["images"] == DATA.num_validation and calibration.method == "platt"
    with open(run.results_path) as f:
        results = json.load(f)
    assert results["model"]["gzsl/mAP"] > 4 * results["random"]["gzsl/mAP"], results["model"]
    ece = results["probabilities"]["ece"]
    before, after = ece["sigmoid(score)"]["ece/seen@10"], ece["calibrated"]["ece/seen@10"]
    # Measured: 0.75 -> 0.026 (the unseen tags' shared map: 0.56 -> 0.23).
    assert after <= before / 2 and after < 0.05, ece
    assert ece["calibrated"]["ece/unseen@10"] < ece["sigmoid(score)"]["ece/unseen@10"], ece
    assert "ECE seen, top-10" in trained["evaluated"] and "tuned per tag" in trained["evaluated"]
    rows = {(row["thresholds"], row["probabilities"]) for row in results["probabilities"]["thresholds"]}
    assert ("tuned per tag", "calibrated") in rows


def summary_images(log_dir):
    """{tag: PNG image} of the image summaries in a TensorBoard run folder."""
    found = {}
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    found[value.tag] = Image.open(io.BytesIO(value.tensor.string_val[2]))
    return found


def test_reliability_diagrams_are_in_the_tensorboard_logs(trained):
    logs = trained["run"].logs_dir
    validation = summary_images(os.path.join(logs, "calibration"))  # written by train --calibrate
    test = summary_images(os.path.join(logs, "test"))  # written by evaluate
    assert set(validation) == {"reliability/seen"} and set(test) == {"reliability/seen", "reliability/unseen"}
    for picture in [*validation.values(), *test.values()]:
        assert picture.format == "PNG" and picture.width >= 300 and len(picture.getcolors(1 << 16)) > 8


def test_export_probabilities_equal_the_python_calibration(trained):
    assert "calibrated, to saved_models/demo/1" in trained["exported"]
    model = str(trained["model"])
    assert export.python_ops(model) == []
    calibration, metadata = export.read_calibration_file(model)
    assert metadata["above_threshold"] == "tuned"
    vocabulary = trained["run"].vocabulary()
    signatures = tf.saved_model.load(model).signatures
    images = tf.constant([open(p, "rb").read() for p in sorted(
        os.path.join(trained["folder"], "data", "demo", "images", "test", n) for n in os.listdir(
            trained["folder"] / "data" / "demo" / "images" / "test"))[:64]])
    served = {k: v.numpy() for k, v in signatures["serving_default"](images=images).items()}
    # The same scores, every tag's: score_tags with the vocabulary's vectors.
    scored = signatures["score_tags"](images=images, tag_vectors=tf.constant(vocabulary.vectors))
    scores = scored["scores"].numpy()
    expected = calibration.probabilities(scores)
    columns = np.vectorize(vocabulary.tags.index)(served["tags"].astype(str))
    np.testing.assert_allclose(served["probabilities"], np.take_along_axis(expected, columns, 1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(served["above_threshold"], served["probabilities"] >= calibration.thresholds[columns])
    assert served["above_threshold"].any() and not served["above_threshold"].all()
    # score_tags: any tag through the unseen-tag map (pooled by rank among the vocabulary's
    # tags in the image; the vocabulary's own tags, sent again, do not outrank themselves).
    expected = calibration.unseen_probabilities(scores, scores)
    np.testing.assert_allclose(scored["probabilities"].numpy(), expected, rtol=0, atol=1e-6)
    unseen = list(vocabulary.unseen)
    np.testing.assert_allclose(expected[:, unseen], calibration.probabilities(scores)[:, unseen], atol=1e-12)


def annotated_lines(path):
    """Lines of text in the tag panel of an annotated image (bands of rows holding ink)."""
    with Image.open(path) as image:
        panel = np.asarray(image.convert("L"))[:, -290:]
    ink = (panel < 128).any(axis=1)
    return int(np.sum(ink[1:] & ~ink[:-1]) + ink[0])


@pytest.mark.parametrize("threshold", ["0.5", "tuned"])
def test_tag_with_a_threshold(trained, threshold, tmp_path):
    images = [os.path.join("data", "demo", "images", "test", f"{i:05d}.png") for i in range(4)]
    done = command("sdl_keras.tag", "--flagfile=configs/tag.flags", "--model=saved_models/demo",
                   f"--threshold={threshold}", f"--output={tmp_path}/tags.jsonl", f"--annotate={tmp_path}/figures",
                   *images, cwd=trained["folder"])
    assert "Tagged 4 of 4 images with saved_models/demo/1 (calibrated)" in done.stderr
    calibration = trained["run"].calibration()
    records = [json.loads(line) for line in open(tmp_path / "tags.jsonl")]
    for record in records:
        limits = [0.5 if threshold == "0.5" else calibration.thresholds[calibration.tags.index(t)]
                  for t in record["tags"]]
        assert record["above_threshold"] == [p >= limit for p, limit in zip(record["probabilities"], limits)]
        # The figure shows a heading and the tags above the threshold, no others.
        figure = tmp_path / "figures" / os.path.basename(record["image"])
        assert annotated_lines(figure) == 1 + sum(record["above_threshold"]), record


def test_query_filters_hits_by_probability(trained):
    folder = trained["folder"]
    command("sdl_keras.search", "build", "--index=index", "--run_dir=runs/demo",
            "--manifest=data/demo/test.jsonl", cwd=folder)
    index = RetrievalIndex.load(str(folder / "index"))
    assert index.calibration is not None and index.calibration.tags == list(index.vocabulary.tags)
    tag = index.vocabulary.unseen_tags[0]
    everything = index.search(tag_query([tag], index.vocabulary), k=40)
    probabilities = [hit.probabilities[0] for hit in everything]
    cut = float(np.median(probabilities))
    done = command("sdl_keras.search", "query", "--index=index", f"--tag={tag}", "--top_n=40",
                   f"--min_probability={cut}", "--json", cwd=folder)
    hits = json.loads(done.stdout)["hits"]
    assert [h["id"] for h in hits] == [h.id for h in everything if h.probabilities[0] >= cut]
    assert 0 < len(hits) < 40 and all(h["probabilities"][0] >= cut for h in hits)
    # A hit's probability is the calibration's for its score (an unseen tag: by rank in the image).
    matrices = index._matrices(np.arange(len(index)))
    vocabulary_scores = (matrices @ index.vocabulary.vectors.T).max(axis=1)
    column = index.vocabulary.tags.index(tag)
    expected = index.calibration.probabilities(vocabulary_scores)[:, column]
    by_id = dict(zip(index.ids, expected))
    np.testing.assert_allclose([h["probabilities"][0] for h in hits], [by_id[h["id"]] for h in hits], atol=1e-6)


def test_calibrate_command_refits_with_other_settings(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"].path, run_dir, ignore=shutil.ignore_patterns("logs", "best.keras*"))
    done = command("sdl_keras.calibrate", "--flagfile=configs/calibrate.flags", f"--run_dir={run_dir}",
                   "--calibration_method=isotonic", "--unseen_pooling=score", "--probability_threshold=0.4",
                   cwd=trained["folder"])
    assert "validation images of data/demo/validation.jsonl: isotonic maps" in done.stdout, done.stdout
    refitted = RunDirectory(run_dir).calibration()
    assert (refitted.method, refitted.unseen_pooling, refitted.probability_threshold) == ("isotonic", "score", 0.4)
    np.testing.assert_array_equal(refitted.threshold_vector(), np.full(len(refitted.tags), 0.4))
    assert os.path.exists(run_dir / "logs" / "calibration")


def test_uncalibrated_runs_say_so(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"].path, run_dir, ignore=shutil.ignore_patterns("logs", "best.keras*",
                                                                               RunDirectory.CALIBRATION))
    with pytest.raises(ValueError, match="needs a calibrated run: .*calibration.json does not exist"):
        export.export_run(str(run_dir), str(tmp_path / "saved_models"), threshold=0.5)
    assert cal.parse_threshold(None) is None


if __name__ == "__main__":
    testing.run(__file__)
