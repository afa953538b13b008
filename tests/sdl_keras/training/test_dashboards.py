"""The TensorBoard dashboards: the loss parts metric, the rendered top-tag images, and a real
`tensorboard` server on 127.0.0.1 reading a short demo run's logs back through its HTTP API."""

import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from sdl_keras.config import TrainConfig
from sdl_keras.metrics import LossParts
from sdl_keras.training import dashboards, train
from sdl_keras.losses import SDLLoss
from tests import testing


def test_loss_parts_are_the_loss_terms_averaged():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6, 5)).astype(np.float32)
    loss = SDLLoss(vectors, reg_weight=0.2, max_positives=3)
    labels = np.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 0, -1, 0]], np.float32)
    A = rng.standard_normal((3, 4, 5)).astype(np.float32)
    metric = LossParts(loss)
    metric.update_state(labels[:2], A[:2])
    metric.update_state(labels[2:], A[2:])
    terms = {key: keras.ops.convert_to_numpy(value) for key, value in loss.terms(labels, A).items()}
    with_positive = terms["has_positive"] == 1
    result = {key: float(value) for key, value in metric.result().items()}
    assert result["loss/rank"] == pytest.approx(terms["rank"][with_positive].mean(), rel=1e-5)
    assert result["loss/diversity_weight"] == pytest.approx(terms["weight"][with_positive].mean(), rel=1e-5)
    assert result["loss/reg"] == pytest.approx(terms["reg"].mean(), rel=1e-5)
    clone = testing.check_config_round_trip(metric)
    assert clone.loss.get_config() == loss.get_config()
    metric.reset_state()
    assert float(metric.result()["loss/rank"]) == 0.0
    with pytest.raises(TypeError, match="needs a loss with terms"):
        LossParts(keras.losses.MeanSquaredError())


def test_rendered_top_tags_colour_correct_and_wrong_tags():
    image = np.full((16, 16, 3), 90, np.uint8)
    tags = ["red circle", "blue square", "green ring"]
    scores = np.array([3.0, 2.0, 1.0])
    picture = dashboards.render_top_tags(image, tags, np.array([1, 0, -1]), scores, np.array([0, 2, 1]),
                                         unseen=[1], top_k=3)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[0] >= 128
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert dashboards._LABEL_COLOURS[1] in colours and dashboards._LABEL_COLOURS[0] in colours
    table = dashboards.top_tags_markdown(
        {"labels": np.array([[1, 0, -1]]), "scores": scores[None], "rows": np.array([[0, 2, 1]])}, tags, [1], 2
    )
    assert "| 0 | 1 | red circle |  | 1 | 3.000 | 0 |" in table and "| 0 | 2 | blue square | yes | 0 |" in table


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("demo"))
    files = make_demo_dataset(folder, DemoConfig(num_train=128, num_test=32, image_size=32, max_objects=2))
    output_dir = str(tmp_path_factory.mktemp("run"))
    config = TrainConfig.from_flat(
        train_source=files["train.jsonl"], test_source=files["test.jsonl"], tags=files["tags.txt"],
        word_vectors=files["words.vec"], unseen_tags=files["unseen_tags.txt"], backbone="small_cnn", image_size=32,
        num_rows=4, batch_size=32, epochs=2, steps_per_epoch=2, learning_rate=1e-3, jit_compile=False,
        dashboard_images=3, output_dir=output_dir, verbose=0,
    )
    train(config)
    return output_dir


class TensorBoard:
    """A `tensorboard` process on 127.0.0.1 with a port the OS picks."""

    def __init__(self, logdir, load_fast):
        self.process = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", logdir, "--host", "127.0.0.1",
             "--port", "0", f"--load_fast={load_fast}", "--reload_interval=1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.time() + 90
        self.url = None
        while self.url is None:
            line = self.process.stdout.readline()
            assert line or self.process.poll() is None, "tensorboard exited"
            assert time.time() < deadline, "tensorboard did not start"
            if " at http://127.0.0.1:" in line:
                self.url = line.split(" at ")[1].split()[0].rstrip("/")

    def get(self, route, **params):
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{route}{'?' + query if query else ''}", timeout=30) as response:
            return response.read()

    def json(self, route, **params):
        return json.loads(self.get(route, **params))

    def wait_for(self, route, ready, **params):
        """Polls a JSON route until `ready(value)`: the server loads the logs in the background."""
        deadline = time.time() + 60
        while True:
            value = self.json(route, **params)
            if ready(value):
                return value
            assert time.time() < deadline, f"{route} {params}: still {value}"
            time.sleep(0.5)

    def close(self):
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_tensorboard_serves_the_run_dashboards(run_dir, load_fast):
    server = TensorBoard(os.path.join(run_dir, "logs"), load_fast)
    try:
        # Scalars: the zero-shot figures per evaluated epoch, the loss and its parts, the learning rate.
        # The validation split is held out of the training images: seen tags only, no ZSL figures.
        zsl = server.wait_for("/data/plugin/scalars/scalars", lambda v: len(v) == 2, run="validation",
                              tag="epoch_gzsl/mAP")
        with open(os.path.join(run_dir, "metrics.json")) as f:
            final = json.load(f)["logs"]
        assert [step for _, step, _ in zsl] == [0, 1]
        assert zsl[-1][2] == pytest.approx(final["val_gzsl/mAP"], rel=1e-5) and "val_zsl/mAP" not in final
        gzsl = server.json("/data/plugin/scalars/scalars", run="validation", tag="epoch_gzsl/F1@3")
        assert gzsl[-1][2] == pytest.approx(final["val_gzsl/F1@3"], rel=1e-5)
        for tag in ("epoch_loss", "epoch_loss/rank", "epoch_loss/reg", "epoch_loss/diversity_weight",
                    "epoch_learning_rate"):
            values = server.json("/data/plugin/scalars/scalars", run="train", tag=tag)
            assert len(values) == 2 and all(np.isfinite(v) for _, _, v in values), tag
        assert server.json("/data/plugin/scalars/scalars", run="train", tag="epoch_loss/diversity_weight")[0][2] > 1

        # Images: 3 validation images with their top tags, as PNGs.
        images = server.wait_for("/data/plugin/images/images", lambda v: len(v) == 2, run="validation",
                                 tag="top_tags", sample=2)
        png = server.get("/data/plugin/images/individualImage?" + images[-1]["query"])
        from PIL import Image

        picture = Image.open(io.BytesIO(png))
        assert picture.format == "PNG" and picture.height >= 128
        assert server.json("/data/plugin/images/tags")["validation"]["top_tags"]["samples"] == 3

        # Histograms: one bucket per row of A, counting the dominant rows of the true tags.
        histogram = server.json("/data/plugin/histograms/histograms", run="validation", tag="dominant_row")
        buckets = np.array(histogram[-1][2])
        assert buckets.shape == (4, 3) and buckets[:, 2].sum() > 0
        np.testing.assert_array_equal(buckets[:, 0], np.arange(4) - 0.5)
        unused = server.json("/data/plugin/scalars/scalars", run="validation", tag="dominant_row/unused_rows")
        assert unused[-1][2] == np.sum(buckets[:, 2] == 0)
    finally:
        server.close()


def test_tensorboard_serves_text_projector_and_hparams(run_dir):
    server = TensorBoard(os.path.join(run_dir, "logs"), "false")
    try:
        text = server.wait_for("/data/plugin/text/text", lambda v: len(v) == 2, run="validation",
                               tag="top_tags_table")
        assert "<table>" in text[-1]["text"] and "unseen" in text[-1]["text"]

        # The projector: every tag's vector, with its name and seen/unseen.
        assert "." in server.json("/data/plugin/projector/runs")
        vectors = np.frombuffer(server.get("/data/plugin/projector/tensor", run=".", name="tag_vectors"), np.float32)
        metadata = server.get("/data/plugin/projector/metadata", run=".", name="tag_vectors").decode().splitlines()
        assert metadata[0] == "tag\tsplit" and len(metadata) == 41
        assert vectors.size == 40 * 64
        assert sum(line.endswith("\tunseen") for line in metadata) == 8

        request = urllib.request.Request(
            f"{server.url}/data/plugin/hparams/experiment", data=json.dumps({"experimentName": ""}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            experiment = json.loads(response.read())
        names = {info["name"] for info in experiment["hparamInfos"]}
        assert {"num_rows", "reg_weight", "diversity_weight", "aggregation", "learning_rate"} <= names
    finally:
        server.close()


if __name__ == "__main__":
    testing.run(__file__)
