"""The one image decoder: encoded bytes -> model input, for training, evaluation, export
and serving alike (TensorFlow only; PIL reads headers).

- `decode_resize`: one encoded JPEG/PNG/GIF/BMP/WebP image -> (S, S, 3) uint8, used by
  every tf.data pipeline (pipelines.files, pipelines.tfrecord) and, through
  `decode_images`, by every exported signature, so a served image reaches the model
  exactly as the evaluated ones did. Its `mode` (a run's `decode_mode`, in its
  config.json and baked into its export) is one of MODES:
    fast          libjpeg's fast integer DCT, decoding at 1/2, 1/4 or 1/8 scale when the
                  image is that much larger, then a bilinear resize (the fastest path);
    pil_bilinear  the accurate integer DCT at full scale, then an antialiased bilinear
                  resize, one axis at a time (width first, rounded to uint8 in between,
                  as PIL): what the official train.py's torchvision `Resize` computes
                  with PIL's `Image.resize(size, BILINEAR)`;
    pil_bicubic   the same with PIL's bicubic (Keys, a = -0.5): `Image.resize`'s default,
                  what the official infer.py (and so the released NUS-WIDE model) used.
  benchmarks/decode.py measures each mode's difference from PIL and its speed.
- `image_header` / `check_image`: the header check servers and offline tools run before
  an image reaches the graph (format and size, without decoding).
- `UnreadableImageError`, `error_text`, `find_undecodable`: naming the image that failed.
"""

import functools
import io
import re

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

CROPS = ("none", "center")
MODES = ("fast", "pil_bilinear", "pil_bicubic")
# libjpeg can scale by these factors while decoding (it computes fewer DCT coefficients).
_JPEG_RATIOS = (1, 2, 4, 8)


def _to_uint8(image):
    # Bilinear and antialiased resizing average their inputs, so values stay in [0, 255]:
    # rounding needs no clipping.
    return tf.cast(image + 0.5, tf.uint8)


def _decode_jpeg(data, crop, shape, ratio):
    """JPEG of `shape` -> uint8 image decoded by libjpeg at 1/`ratio` scale (fewer DCT
    coefficients, a smaller image); with crop="center" only the central square."""
    if crop == "center":
        # The crop window is in the scaled image's coordinates (libjpeg rounds up).
        scaled_h, scaled_w = -(-shape[0] // ratio), -(-shape[1] // ratio)
        side = tf.minimum(scaled_h, scaled_w)
        window = tf.stack([(scaled_h - side) // 2, (scaled_w - side) // 2, side, side])
        return tf.io.decode_and_crop_jpeg(data, window, channels=3, ratio=ratio)
    return tf.io.decode_jpeg(data, channels=3, ratio=ratio)


def _decode_other(data, image_size, crop):
    """PNG/GIF/BMP/WebP -> (S, S, 3) uint8, antialiased: no decoder scaling helps here."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    if crop == "center":
        image = _center_square(image)
    return _to_uint8(tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), antialias=True))


@functools.cache
def _stand_in_jpeg():
    with tf.init_scope():  # a constant, computed once even when first asked for in a graph
        return tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def check_crop(crop, mode="fast"):
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}.")
    if mode not in MODES:
        raise ValueError(f"decode_mode must be one of {MODES}, got {mode!r}.")


def _center_square(image):
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    return tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)


def _pil_resize(image, image_size, method):
    """uint8 (H, W, 3) -> (S, S, 3) as PIL's `Image.resize` with BILINEAR / BICUBIC: an
    antialiased (support widened by the scale) separable filter, the horizontal pass
    first and its result rounded and clipped to uint8, then the vertical pass."""
    def one_axis(image, size):
        resized = tf.image.resize(tf.cast(image, tf.float32), size, method=method, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    image = one_axis(image, tf.stack([tf.shape(image)[0], image_size]))
    return one_axis(image, tf.constant([image_size, image_size]))


def _decode_accurate(data, image_size, crop, method):
    """Any format at full scale, JPEGs with the accurate integer DCT (libjpeg's JDCT_ISLOW,
    PIL's default), then PIL's resize (`_pil_resize`)."""
    is_jpeg = tf.io.is_jpeg(data)
    image = tf.cond(
        is_jpeg,
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    if crop == "center":
        image = _center_square(image)
    return _pil_resize(image, image_size, method)


def decode_resize(data, image_size, crop="none", mode="fast"):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> (image_size, image_size, 3) uint8.

    crop="none" resizes the whole image to a square (as the official code does);
    "center" keeps the aspect ratio and takes the central square. `mode` is one of
    MODES (the module docstring): "fast" uses libjpeg's fast paths (`_decode_jpeg`:
    decoding at reduced scale, and decode-and-crop); "pil_bilinear" and "pil_bicubic"
    reproduce PIL's decode and resize.
    """
    check_crop(crop, mode)
    if mode != "fast":
        image = _decode_accurate(data, int(image_size), crop, mode.removeprefix("pil_"))
        image.set_shape([image_size, image_size, 3])
        return image
    is_jpeg = tf.io.is_jpeg(data)
    # JPEGs decode at the smallest of libjpeg's scales 1/1, 1/2, 1/4, 1/8 that keeps the
    # short side at least S, so the resize after it shrinks less than 2x and plain bilinear
    # suffices. One switch, over those scales and the other formats, each branch as small
    # as it can be: in tf.data every branch taken costs a function call, more the larger
    # the branch. extract_jpeg_shape fails on other formats, so they show it a small JPEG
    # instead; their branch index ignores the result.
    shape = tf.io.extract_jpeg_shape(tf.where(is_jpeg, data, _stand_in_jpeg()))
    short_side = tf.minimum(shape[0], shape[1])
    scale_index = tf.reduce_sum(tf.cast(short_side >= [r * image_size for r in _JPEG_RATIOS[1:]], tf.int32))
    branches = [functools.partial(_decode_jpeg, data, crop, shape, r) for r in _JPEG_RATIOS]
    branches.append(functools.partial(_decode_other, data, image_size, crop))
    image = tf.switch_case(tf.where(is_jpeg, scale_index, len(_JPEG_RATIOS)), branches)
    # Other formats are at size already: resizing to the same size with half-pixel centers
    # returns the input exactly. TF's bilinear kernel is about 2x faster on float input
    # than on uint8, with identical results.
    image = _to_uint8(tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size)))
    image.set_shape([image_size, image_size, 3])
    return image


class UnreadableImageError(ValueError):
    """An image file that cannot be read or decoded; the message names the file."""

    def __init__(self, path, reason):
        super().__init__(f"Unreadable image {path}: {reason}")
        self.path = path
        self.reason = reason


FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def decode_images(encoded, image_size, crop="none", mode="fast"):
    """Decodes a batch of encoded images to the SDL model's input.

    Shape contract: encoded (B,) string -> (B, image_size, image_size, 3) float32 holding
    whole grey levels in [0, 255], the range `build_sdl_model` takes (its preprocessing
    layer rescales). Each image goes through `decode_resize`, the decoder
    of training and evaluation, so a served image reaches the model exactly as the
    evaluated ones did (`crop` and `mode` as in training). Grayscale and RGBA images become RGB; an
    animated GIF gives its first frame. A batch must hold at least one image.
    """
    size = int(image_size)
    # TF Serving answers a failed Assert with INVALID_ARGUMENT and this message.
    check = tf.debugging.assert_positive(tf.size(encoded), message="images is an empty batch")
    with tf.control_dependencies([check]):
        encoded = tf.identity(encoded)
    return tf.map_fn(
        lambda data: tf.cast(decode_resize(data, size, crop, mode), tf.float32),
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
    except Image.DecompressionBombError as error:
        # PIL refuses, from the header, images of over twice Image.MAX_IMAGE_PIXELS pixels.
        raise ValueError(f"is a decompression bomb ({len(data)} bytes): {error}") from None
    except Exception as error:  # PIL raises several types for unreadable headers
        # PIL's "cannot identify" message names only a BytesIO object; other errors say more.
        detail = "" if isinstance(error, UnidentifiedImageError) else f": {error}"
        raise ValueError(
            f"is not a JPEG, PNG, GIF or BMP image ({len(data)} bytes starting {bytes(data[:8])!r}{detail})"
        ) from None
    if fmt not in FORMATS:
        raise ValueError(f"is a {fmt} image; the model decodes only {', '.join(FORMATS)}")
    return fmt, width, height


def check_image(data, max_bytes, max_side, max_pixels=None):
    """Raises ValueError naming the problem when `data` is not an image within the limits.

    The limits are checked from the header, before decoding: a decoded image costs
    width x height x 3 bytes however small its file (an 8192x8192 PNG of 196 KB decodes
    to 201 MB)."""
    if max_bytes and len(data) > max_bytes:
        raise ValueError(f"has {len(data)} bytes, over the limit of {max_bytes}")
    fmt, width, height = image_header(data)
    if max_side and max(width, height) > max_side:
        raise ValueError(f"is a {width}x{height} {fmt} image, over the limit of {max_side} pixels a side")
    if max_pixels and width * height > max_pixels:
        raise ValueError(f"is a {width}x{height} {fmt} image of {width * height:,} pixels ({len(data):,} bytes), "
                         f"over the limit of {max_pixels:,} pixels")
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
        line = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]( name:\s*\S*)?|\[\[.*", "", line).strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces")):
            return line
    return error.message.strip()
