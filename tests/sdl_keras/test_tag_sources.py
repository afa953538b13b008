"""Every tag-vector source through the commands a user runs: a subword FastText model and a
keras_hub text encoder (tiny and random: nothing can be downloaded here) train, evaluate and
export; the text encoder's export scores free text in the real server, asked with strings
through the tensorflow-serving-api stub."""

import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from tests import testing
from sdl_keras.embeddings import demo_models

DATA = DemoConfig(num_train=48, num_test=24, num_validation=24, image_size=32, max_objects=2)
SHRINK = ["--image_size=32", "--batch_size=16", "--epochs=1", "--steps_per_epoch=2", "--num_rows=2",
          "--jit_compile=false", "--verbose=0"]


def command(module, *flags, cwd):
    result = subprocess.run([sys.executable, "-m", module, *flags], env=testing.python_env(), cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A user's folder: the demo data (with a tag no word-vector file of its words holds), a
    FastText model of its words and a random CLIP preset."""
    folder = tmp_path_factory.mktemp("sources")
    os.symlink(os.path.join(testing.REPO_ROOT, "configs"), folder / "configs")
    make_demo_dataset(str(folder / "data" / "demo"), DATA)
    with open(folder / "data" / "demo" / "tags.txt", "a") as f:
        f.write("purple rings\n")  # a plural: no vector in words.vec
    with open(folder / "data" / "demo" / "unseen_tags.txt", "a") as f:
        f.write("purple rings\n")
    demo_models.train_fasttext(str(folder / "data"))
    demo_models.save_clip_preset(str(folder / "clip_tiny"))
    return folder


def train_and_evaluate(folder, run, *flags):
    command("sdl_keras.train", "--flagfile=configs/demo.flags", *SHRINK, f"--output_dir=runs/{run}", *flags, cwd=folder)
    command("sdl_keras.evaluate", f"--run_dir=runs/{run}", cwd=folder)
    with open(folder / "runs" / run / "results.json") as f:
        return json.load(f)["model"]


@pytest.fixture(scope="module")
def fasttext_run(folder):
    """The evaluation results of a run whose tag vectors come from the subword FastText model."""
    return train_and_evaluate(folder, "fasttext", "--word_vectors=data/model.bin")


def test_subword_fasttext_vectors_through_training_and_evaluation(folder, fasttext_run):
    from sdl_keras.embeddings import load_tag_vectors
    from sdl_keras.run_dir import RunDirectory

    results = fasttext_run
    vocabulary = RunDirectory(folder / "runs" / "fasttext").vocabulary()
    assert "purple rings" in vocabulary.unseen_tags and vocabulary.dim == 16
    expected = load_tag_vectors(str(folder / "data" / "model.bin"), list(vocabulary.tags))
    assert expected.built_from_subwords == ("purple rings",)
    np.testing.assert_allclose(vocabulary.vectors, expected.vectors, atol=1e-6)
    assert 0 <= results["zsl/mAP"] <= 100 and results["zsl/num_images"] > 0


@pytest.fixture(scope="module")
def encoder_run(folder):
    """A calibrated run whose tag vectors come from the random CLIP, and its export."""
    results = train_and_evaluate(folder, "clip", "--tag_encoder=clip_tiny", "--tag_encoder_cache=cache",
                                 "--tag_templates=a photo of a {}.|a picture of the {}.")
    exported = command("sdl_keras.export", "--run_dir=runs/clip", "--name=clip", cwd=folder)
    return {"results": results, "exported": exported.stdout, "model": folder / "saved_models" / "clip" / "1"}


def test_text_encoder_vectors_are_the_templates_mean_and_cached(folder, encoder_run, monkeypatch):
    from sdl_keras.embeddings.text_encoder import TextTagEncoder, encode_tags
    from sdl_keras.run_dir import RunDirectory

    vocabulary = RunDirectory(folder / "runs" / "clip").vocabulary()
    templates = ("a photo of a {}.", "a picture of the {}.")
    encoder = TextTagEncoder(str(folder / "clip_tiny"), templates)
    embedded = [encoder.encode([t]) for t in ("purple rings", "red circle")]
    expected = np.mean([np.asarray(encoder.embed([t.replace("{}", "purple rings")]))[0] for t in templates], axis=0)
    np.testing.assert_allclose(embedded[0][0], expected / np.linalg.norm(expected), atol=1e-5)
    np.testing.assert_allclose(vocabulary.vectors[vocabulary.index("purple rings")], embedded[0][0], atol=1e-5)
    np.testing.assert_allclose(vocabulary.vectors[vocabulary.index("red circle")], embedded[1][0], atol=1e-5)
    # One .npz per encoder and templates in the cache folder, holding every tag.
    cached = os.listdir(folder / "cache")
    assert len(cached) == 1 and cached[0].endswith(".npz")
    with np.load(folder / "cache" / cached[0]) as data:
        assert set(data["tags"]) == set(vocabulary.tags)
    import sdl_keras.embeddings.text_encoder as text_encoder

    def no_loading(*args):
        raise AssertionError("the cached tags were embedded again")

    monkeypatch.setattr(text_encoder, "TextTagEncoder", no_loading)
    again = encode_tags(list(vocabulary.tags), str(folder / "clip_tiny"), templates, str(folder / "cache"))
    np.testing.assert_allclose(again, vocabulary.vectors, atol=1e-6)
    assert 0 <= encoder_run["results"]["gzsl/mAP"] <= 100
    # evaluate --tag_encoder embeds the run's tags anew: with the run's encoder and templates, the run's figures.
    command("sdl_keras.evaluate", "--run_dir=runs/clip", "--tag_encoder=clip_tiny", "--results=again.json",
            "--tag_templates=a photo of a {}.|a picture of the {}.", "--tag_encoder_cache=cache_again", cwd=folder)
    with open(folder / "again.json") as f:
        reembedded = json.load(f)
    assert reembedded["model"] == pytest.approx(encoder_run["results"], abs=1e-6)
    assert "embedded anew by --tag_encoder=clip_tiny" in reembedded["probabilities"]["uncalibrated"]
    assert os.listdir(folder / "cache_again") == cached


def test_score_text_is_graph_only_and_served_to_the_tensorflow_serving_stub(folder, encoder_run):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from sdl_keras.run_dir import RunDirectory
    from sdl_keras.saved_model import TEXT_OPS, graph_ops, python_ops
    from sdl_keras.scoring import tag_scores

    model_dir = str(encoder_run["model"])
    assert python_ops(model_dir) == []
    # Beside core TensorFlow, exactly the TF Text ops named in TEXT_OPS.
    assert {op for op in graph_ops(model_dir) if not hasattr(tf.raw_ops, op)} == set(TEXT_OPS)
    assert python_ops(model_dir, allowed=()) == sorted(TEXT_OPS)
    images = [open(folder / "data" / "demo" / "images" / "test" / f"{i:05d}.png", "rb").read() for i in range(2)]
    texts = ["purple rings", "a red circle", "zebra"]
    from sdl_keras.serving.load import start_server_process

    server = start_server_process("--model_name=clip", f"--model_base_path={folder / 'saved_models' / 'clip'}",
                                  env=testing.python_env())
    try:
        def predict(texts):
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = "clip", "score_text"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
            request.inputs["texts"].CopyFrom(tf.make_tensor_proto(texts, dtype=tf.string))
            with grpc.insecure_channel(server.grpc) as channel:
                return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)

        response = predict(texts)
        served = tf.make_ndarray(response.outputs["scores"])
        assert served.shape == (2, 3)
        # The same scores as embedding the texts in Python and scoring the run's matrices.
        from pipelines.decode import decode_images
        from sdl_keras.embeddings.text_encoder import TextTagEncoder, parse_templates

        run = RunDirectory(folder / "runs" / "clip")
        config = run.config()
        encoder = TextTagEncoder(str(folder / "clip_tiny"), parse_templates(config.data.tag_templates))
        matrices = run.load_model()(decode_images(tf.constant(images), 32), training=False)
        expected, _ = tag_scores(matrices, encoder.encode(texts), config.loss.aggregation)
        np.testing.assert_allclose(served, np.asarray(expected), atol=1e-4)
        # Calibrated run: probabilities through the unseen-tag map.
        probabilities = tf.make_ndarray(response.outputs["probabilities"])
        assert probabilities.shape == (2, 3) and ((probabilities >= 0) & (probabilities <= 1)).all()
        for bad, message in (([], "texts is empty"), (["x" * 2000], "over 1024 bytes"),
                             (["a"] * 300, "over 256 texts")):
            with pytest.raises(grpc.RpcError) as error:
                predict(bad)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()
        # The command-line client asks score_text with --text.
        image = str(folder / "data" / "demo" / "images" / "test" / "00000.png")
        printed = command("sdl_keras.serving.client", f"--server={server.grpc}", "--model=clip", "--format=jsonl",
                          "--text=purple rings", "--text=zebra", image, cwd=folder).stdout
        record = json.loads(printed.strip().splitlines()[-1])
        assert sorted(record["tags"]) == ["purple rings", "zebra"]
        expected = {"purple rings": served[0][0], "zebra": served[0][2]}
        assert record["scores"] == pytest.approx([expected[t] for t in record["tags"]], abs=1e-4)
    finally:
        assert server.stop() == 0, server.log()


def test_tag_scores_free_text_in_the_export_or_embedded_by_the_encoder(folder, encoder_run, fasttext_run):
    image = str(folder / "data" / "demo" / "images" / "test" / "00000.png")
    texts = ["--text=purple rings", "--text=zebra", "--text=a red circle"]

    def tag(*flags):
        return command("sdl_keras.tag", "--model=saved_models/clip", *texts, *flags, image, cwd=folder)

    in_graph = json.loads(tag("--threshold=0.5").stdout.strip())
    assert sorted(in_graph["tags"]) == ["a red circle", "purple rings", "zebra"]
    assert in_graph["scores"] == sorted(in_graph["scores"], reverse=True)
    assert in_graph["above_threshold"] == [p >= 0.5 for p in in_graph["probabilities"]]
    # Embedded here by the same encoder and templates, scored through score_tags: the same scores.
    here = json.loads(tag("--tag_encoder=clip_tiny", "--tag_templates=a photo of a {}.|a picture of the {}.",
                          "--tag_encoder_cache=cache").stdout.strip())
    assert here["tags"] == in_graph["tags"]
    assert here["scores"] == pytest.approx(in_graph["scores"], abs=1e-4)
    assert here["probabilities"] == pytest.approx(in_graph["probabilities"], abs=1e-4)
    # An export without score_text (a word-vector run's) says so, naming the export.
    from sdl_keras.tagging import Tagger

    command("sdl_keras.export", "--run_dir=runs/fasttext", "--name=fasttext", cwd=folder)
    with pytest.raises(ValueError, match="saved_models/fasttext/1 has no score_text signature"):
        Tagger(str(folder / "saved_models" / "fasttext"), texts=["zebra"])


def test_free_text_queries_an_index_of_the_text_encoder_run(folder, encoder_run):
    images = str(folder / "data" / "demo" / "images" / "test")
    command("sdl_keras.search", "build", "--index=index", "--run_dir=runs/clip", images, cwd=folder)
    printed = command("sdl_keras.search", "query", "--index=index", "--text=purple rings", "--tag_encoder=clip_tiny",
                      "--tag_templates=a photo of a {}.|a picture of the {}.", "--tag_encoder_cache=cache", "--json",
                      "--top_n=3", cwd=folder)
    hits = json.loads(printed.stdout)
    assert hits["query"] == ["purple rings"] and len(hits["hits"]) == 3
    # The same hits as the run's own vector of that tag (its vocabulary's).
    by_tag = json.loads(command("sdl_keras.search", "query", "--index=index", "--tag=purple rings", "--json",
                                "--top_n=3", cwd=folder).stdout)
    assert [h["id"] for h in hits["hits"]] == [h["id"] for h in by_tag["hits"]]


if __name__ == "__main__":
    testing.run(__file__)
