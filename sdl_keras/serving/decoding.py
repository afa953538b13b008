"""Encoded image bytes -> model input: the in-graph decoder every exported signature
starts with, and the header check servers run before an image reaches the graph.

TF Serving clients send images as they are stored (JPEG, PNG, GIF, BMP), so the
decoding, resizing and casting live inside the SavedModel: a client needs no
TensorFlow and no knowledge of the model's input size.
"""

import io
import re

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def decode_images(encoded, image_size, crop="none"):
    """Decodes a batch of encoded images to the SDL model's input.

    Shape contract: encoded (B,) string -> (B, image_size, image_size, 3) float32 holding
    whole grey levels in [0, 255], the range `build_sdl_model` takes (its preprocessing
    layer rescales). Each image goes through `pipelines.data.decode_resize`, the decoder
    of training and evaluation, so a served image reaches the model exactly as the
    evaluated ones did (`crop` as in training). Grayscale and RGBA images become RGB; an
    animated GIF gives its first frame. A batch must hold at least one image.
    """
    from pipelines.data import decode_resize

    size = int(image_size)
    # TF Serving answers a failed Assert with INVALID_ARGUMENT and this message.
    check = tf.debugging.assert_positive(tf.size(encoded), message="images is an empty batch")
    with tf.control_dependencies([check]):
        encoded = tf.identity(encoded)
    return tf.map_fn(
        lambda data: tf.cast(decode_resize(data, size, crop), tf.float32),
        encoded,
        fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32),
        name="decode_images",
    )


def image_header(data):
    """(format, width, height) of an encoded image, reading its header only.

    Raises ValueError, saying what the bytes are, for anything but a JPEG, PNG,
    GIF or BMP image: servers reject such input before decoding, and check the
    dimensions against their limits before a huge image is decompressed.
    """
    if not data:
        raise ValueError("is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except Exception as error:  # PIL raises several types for unreadable headers
        # PIL's "cannot identify" message names only a BytesIO object; other errors say more.
        detail = "" if isinstance(error, UnidentifiedImageError) else f": {error}"
        raise ValueError(
            f"is not a JPEG, PNG, GIF or BMP image ({len(data)} bytes starting {bytes(data[:8])!r}{detail})"
        ) from None
    if fmt not in FORMATS:
        raise ValueError(f"is a {fmt} image; the model decodes only {', '.join(FORMATS)}")
    return fmt, width, height


def check_image(data, max_bytes, max_side):
    """Raises ValueError naming the problem when `data` is not an image within the limits."""
    if max_bytes and len(data) > max_bytes:
        raise ValueError(f"has {len(data)} bytes, over the limit of {max_bytes}")
    fmt, width, height = image_header(data)
    if max_side and max(width, height) > max_side:
        raise ValueError(f"is a {width}x{height} {fmt} image, over the limit of {max_side} pixels a side")
    return fmt, width, height


def find_undecodable(images):
    """(index, message) of the first image TensorFlow cannot decode, or None.

    A decode error inside a batched graph does not say which image failed; this
    decodes each image alone to name it.
    """
    for index, data in enumerate(images):
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            return index, error_text(error)
    return None


def error_text(error):
    """The line of a TensorFlow error that says what went wrong, without node names and
    the graph-execution preamble."""
    for line in error.message.splitlines():
        line = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|\[\[.*", "", line).strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces")):
            return line
    return error.message.strip()
