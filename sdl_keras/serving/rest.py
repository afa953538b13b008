"""TF Serving's REST predict API as JSON <-> numpy, for both the client and the local server.

Binary strings (encoded images) travel as `{"b64": "<base64>"}`; other strings as JSON
strings. A request is in the columnar format, `{"signature_name": ..., "inputs": {name:
value}}` (answered `{"outputs": ...}`), or the row format, `{"instances": [...]}` (answered
`{"predictions": [...]}`), as https://www.tensorflow.org/tfx/serving/api_rest describes.
"""

import base64

import numpy as np


def _decode_value(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"an object in a tensor must be {{'b64': ...}}, got keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as error:
            raise ValueError(f"invalid base64: {error}") from None
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def to_array(value, dtype):
    """A numpy array of `dtype` (np.object_ for strings) from a JSON tensor value."""
    value = _decode_value(value)
    if np.dtype(dtype) == np.object_:  # tf.string's numpy dtype is `object`
        array = np.array(value, dtype=object)
        if array.size and not all(isinstance(v, bytes) for v in array.flat):
            raise ValueError("expected strings or {'b64': ...} objects")
        return array
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot be read as {np.dtype(dtype).name}: {error}") from None


def to_json(array, binary=False):
    """A JSON value from a numpy output: bytes become UTF-8 strings, or b64 objects
    where `binary` (TF Serving does so for outputs whose name ends in `_bytes`)."""
    if array.dtype == np.object_ or array.dtype.kind == "S":
        def convert(v):
            if binary:
                return {"b64": base64.b64encode(v).decode("ascii")}
            return v.decode("utf-8", errors="replace")

        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def parse_predict_request(body, input_dtypes):
    """(signature_name, {input: numpy array}, row_format) from a decoded JSON body.

    `input_dtypes` maps the signature's inputs to numpy dtypes; raises ValueError
    naming the problem.
    """
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("the request must have exactly one of 'instances' (row format) or 'inputs' (columnar)")
    row_format = "instances" in body
    data = body["instances" if row_format else "inputs"]
    names = sorted(input_dtypes)
    if row_format:
        if not isinstance(data, list):
            raise ValueError("'instances' must be a list")
        named = data and all(isinstance(r, dict) and "b64" not in r for r in data)
        if named:
            data = {k: [r.get(k) for r in data] for k in sorted({k for r in data for k in r})}
    else:
        named = isinstance(data, dict) and "b64" not in data
    if not named:
        if len(names) != 1:
            raise ValueError(f"the signature takes several inputs {names}: name them")
        data = {names[0]: data}
    inputs = {}
    for key, value in data.items():
        if key not in input_dtypes:
            raise ValueError(f"unknown input {key!r}; the signature takes {names}")
        try:
            inputs[key] = to_array(value, input_dtypes[key])
        except ValueError as error:
            raise ValueError(f"input {key!r}: {error}") from None
    return body.get("signature_name") or "serving_default", inputs, row_format


def predict_response(outputs, row_format):
    """The JSON body answering a predict request."""
    converted = {k: to_json(v, binary=k.endswith("_bytes")) for k, v in outputs.items()}
    if not row_format:
        return {"outputs": converted if len(converted) > 1 else next(iter(converted.values()))}
    if len(converted) == 1:
        return {"predictions": next(iter(converted.values()))}
    batch = len(next(iter(converted.values())))
    return {"predictions": [{k: v[i] for k, v in converted.items()} for i in range(batch)]}


def predict_request(inputs, signature_name="serving_default"):
    """A columnar request body from {input: numpy array}; bytes go as b64 objects."""
    def encode(value):
        if isinstance(value, bytes):
            return {"b64": base64.b64encode(value).decode("ascii")}
        if isinstance(value, list):
            return [encode(v) for v in value]
        return value

    return {"signature_name": signature_name, "inputs": {k: encode(np.asarray(v).tolist()) for k, v in inputs.items()}}


def outputs_from_response(body, single_output="output"):
    """{output: numpy array} from a columnar predict response (strings as bytes).

    TF Serving answers a one-output signature with the bare value: it is named
    `single_output`.
    """
    outputs = body["outputs"]
    if not isinstance(outputs, dict):
        outputs = {single_output: outputs}

    def to_numpy(value):
        array = np.array(value)
        return np.array(_decode_value(value), dtype=object) if array.dtype.kind == "U" else array

    return {k: to_numpy(v) for k, v in outputs.items()}
