"""TF Serving's REST JSON <-> numpy: request bodies both ways, both formats, and errors."""

import base64
import json

import numpy as np
import pytest

from sdl_keras.serving import rest
from tests import testing

IMAGE_INPUTS = {"images": np.object_}
SCORE_INPUTS = {"images": np.object_, "tag_vectors": np.float32}


def _b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def test_client_body_round_trips_through_the_server_parser():
    images = np.array([b"\xff\xd8 one", b"\x89PNG two"], dtype=object)
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = json.loads(json.dumps(rest.predict_request({"images": images, "tag_vectors": vectors}, "score_tags")))
    assert body["inputs"]["images"] == [_b64(b"\xff\xd8 one"), _b64(b"\x89PNG two")]
    signature, inputs, row_format = rest.parse_predict_request(body, SCORE_INPUTS)
    assert (signature, row_format) == ("score_tags", False)
    assert inputs["images"].tolist() == images.tolist()
    assert inputs["tag_vectors"].dtype == np.float32
    np.testing.assert_array_equal(inputs["tag_vectors"], vectors)


def test_row_format_single_and_named_inputs():
    _, inputs, row_format = rest.parse_predict_request({"instances": [_b64(b"a"), _b64(b"b")]}, IMAGE_INPUTS)
    assert row_format and inputs["images"].tolist() == [b"a", b"b"]
    _, inputs, _ = rest.parse_predict_request({"instances": [{"images": _b64(b"a")}]}, IMAGE_INPUTS)
    assert inputs["images"].tolist() == [b"a"]


def test_responses_in_both_formats_and_back():
    outputs = {
        "tags": np.array([[b"sky", "café".encode()]], dtype=object),
        "scores": np.array([[0.5, 0.25]], dtype=np.float32),
        "unseen": np.array([[False, True]]),
    }
    columnar = json.loads(json.dumps(rest.predict_response(outputs, row_format=False)))
    assert columnar["outputs"]["tags"] == [["sky", "café"]]
    back = rest.outputs_from_response(columnar)
    assert back["tags"].tolist() == [[b"sky", "café".encode()]]
    np.testing.assert_array_equal(back["unseen"], outputs["unseen"])
    rows = rest.predict_response(outputs, row_format=True)
    assert rows["predictions"] == [{"tags": ["sky", "café"], "scores": [0.5, 0.25], "unseen": [False, True]}]
    single = rest.predict_response({"scores": outputs["scores"]}, row_format=False)
    assert rest.outputs_from_response(single, single_output="scores")["scores"].shape == (1, 2)
    binary = rest.predict_response({"image_bytes": np.array([b"\x00\xff"], dtype=object)}, row_format=False)
    assert binary["outputs"] == [_b64(b"\x00\xff")]


@pytest.mark.parametrize(
    "body,inputs,message",
    [
        ([], IMAGE_INPUTS, "must be a JSON object"),
        ({"instances": [], "inputs": []}, IMAGE_INPUTS, "exactly one of 'instances'"),
        ({"inputs": [_b64(b"a")]}, SCORE_INPUTS, r"several inputs \['images', 'tag_vectors'\]: name them"),
        ({"inputs": {"pictures": []}}, IMAGE_INPUTS, "unknown input 'pictures'"),
        ({"inputs": [{"b64": "***"}]}, IMAGE_INPUTS, "input 'images': invalid base64"),
        ({"inputs": [{"b64": "AA==", "x": 1}]}, IMAGE_INPUTS, "must be {'b64': ...}"),
        ({"inputs": [1, 2]}, IMAGE_INPUTS, "input 'images': expected strings"),
        ({"instances": [1.5]}, {"images": object}, "input 'images': expected strings"),  # tf.string's numpy dtype
        ({"instances": [None]}, IMAGE_INPUTS, "input 'images': expected strings"),
        ({"inputs": {"images": [], "tag_vectors": [["a"]]}}, SCORE_INPUTS, "input 'tag_vectors': cannot be read as float32"),
    ],
)
def test_bad_requests_name_the_problem(body, inputs, message):
    with pytest.raises(ValueError, match=message):
        rest.parse_predict_request(body, inputs)


if __name__ == "__main__":
    testing.run(__file__)
