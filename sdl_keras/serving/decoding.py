"""Encoded image bytes -> model input: the in-graph decoder every exported signature
starts with, and the header check servers run before an image reaches the graph.

TF Serving clients send images as they are stored (JPEG, PNG, GIF, BMP), so the
decoding, resizing and casting live inside the SavedModel: a client needs no
TensorFlow and no knowledge of the model's input size.
"""

import io

import tensorflow as tf
from PIL import Image

FORMATS = ("JPEG", "PNG", "GIF", "BMP")
RESIZE_METHODS = ("bilinear", "bicubic", "area", "nearest")


def decode_images(encoded, image_size, resize_method="bilinear"):
    """Decodes a batch of encoded images to the SDL model's input.

    Shape contract: encoded (B,) string -> (B, image_size, image_size, 3) float32 in
    the uint8 range [0, 255], the range `build_sdl_model` takes (its preprocessing
    layer rescales). Grayscale and RGBA images become RGB; an animated GIF gives its
    first frame (`expand_animations=False`), so every image is one (H, W, 3) array.
    Images of any size are resized to the model's square input (aspect not kept, as
    in the official inference script). A batch must hold at least one image.
    """
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}.")
    size = (int(image_size), int(image_size))

    def decode_one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        image = tf.image.resize(tf.cast(image, tf.float32), size, method=resize_method, antialias=True)
        # Resizing overshoots [0, 255] a little (bicubic ringing); the model saw uint8 pixels.
        return tf.clip_by_value(image, 0.0, 255.0)

    # TF Serving answers a failed Assert with INVALID_ARGUMENT and this message.
    check = tf.debugging.assert_positive(tf.size(encoded), message="images is an empty batch")
    with tf.control_dependencies([check]):
        encoded = tf.identity(encoded)
    return tf.map_fn(
        decode_one,
        encoded,
        fn_output_signature=tf.TensorSpec((*size, 3), tf.float32),
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
        raise ValueError(
            f"is not a JPEG, PNG, GIF or BMP image ({len(data)} bytes starting {bytes(data[:8])!r}: {error})"
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
            return index, error.message.strip().splitlines()[0]
    return None
