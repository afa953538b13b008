"""In-graph image decoding (every format the export accepts) and the servers' header checks."""

import io
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines import decode
from tests import testing


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("BMP", "RGB"), ("GIF", "RGB"), ("JPEG", "RGB")])
def test_decodes_each_format_to_rgb_at_the_model_size(fmt, mode):
    data, pixels = testing.encoded_image(fmt, size=(32, 32), mode=mode)
    decoded = decode.decode_images(tf.constant([data, data]), 32).numpy()
    assert decoded.shape == (2, 32, 32, 3) and decoded.dtype == np.float32
    if fmt == "JPEG":  # decoders differ a little in chroma upsampling; lossless formats match exactly
        difference = np.abs(decoded[0] - pixels)
        assert difference.mean() < 2.0 and difference.max() <= 8, (difference.mean(), difference.max())
    else:
        np.testing.assert_array_equal(decoded[0], pixels)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode.decode_images(tf.constant([buffer.getvalue()]), 4).numpy()
    np.testing.assert_allclose(decoded[0, :, :, 0], 255.0, atol=1)
    np.testing.assert_allclose(decoded[0, :, :, 2], 0.0, atol=1)


def test_resizes_and_crops_as_in_training():
    """A 60x20 image, red | green | blue in thirds: "none" squeezes all of it into the
    square, "center" keeps the central (green) square, as training's `crop` does."""
    thirds = np.zeros((20, 60, 3), np.uint8)
    for i in range(3):
        thirds[:, 20 * i : 20 * (i + 1), i] = 255
    data = tf.io.encode_png(thirds).numpy()
    squeezed = decode.decode_images(tf.constant([data]), 12, "none").numpy()[0]
    assert squeezed[:, 0, 0].min() == 255 and squeezed[:, -1, 2].min() == 255
    cropped = decode.decode_images(tf.constant([data]), 12, "center").numpy()[0]
    np.testing.assert_array_equal(cropped, np.broadcast_to([0.0, 255.0, 0.0], (12, 12, 3)))


def test_real_photos_decode_at_any_size():
    folder = testing.shared_path("reference", "images")
    photos = [open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))]
    decoded = decode.decode_images(tf.constant(photos), 64).numpy()
    assert decoded.shape == (6, 64, 64, 3) and decoded.min() >= 0 and decoded.max() <= 255
    assert np.array_equal(decoded, np.round(decoded)) and decoded.std() > 10


def test_real_photo_header():
    path = testing.shared_path("reference", "images", "28878_530841920_9f296f33c3_m.jpg")
    with open(path, "rb") as f:
        data = f.read()
    fmt, width, height = decode.image_header(data)
    assert fmt == "JPEG" and (height, width) == tuple(tf.io.extract_jpeg_shape(data).numpy()[:2])


def test_header_checks_name_the_problem():
    png, _ = testing.encoded_image("PNG", size=(40, 30))
    assert decode.check_image(png, max_bytes=10**6, max_side=40) == ("PNG", 40, 30)
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        decode.check_image(b"", 100, 100)
    with pytest.raises(ValueError, match=r"is not a JPEG, PNG, GIF or BMP image \(12 bytes starting b'not an i'"):
        decode.image_header(b"not an image")
    with pytest.raises(ValueError, match=f"has {len(png)} bytes, over the limit of 10"):
        decode.check_image(png, max_bytes=10, max_side=100)
    with pytest.raises(ValueError, match="is a 40x30 PNG image, over the limit of 39 pixels a side"):
        decode.check_image(png, max_bytes=10**6, max_side=39)
    with pytest.raises(ValueError, match=rf"is a 40x30 PNG image of 1,200 pixels \({len(png):,} bytes\), over the "
                                         "limit of 1,199 pixels"):
        decode.check_image(png, max_bytes=10**6, max_side=40, max_pixels=1199)
    # A header declaring 30000 x 30000 pixels: PIL's own bomb check refuses it before any decoding.
    bomb = bytearray(testing.encode_image(testing.smooth_image((8, 8)), "PNG"))
    bomb[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR's width and height, then its CRC
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")
    with pytest.raises(ValueError, match=r"is a decompression bomb \(\d+ bytes\): Image size \(900000000 pixels\)"):
        decode.image_header(bytes(bomb))
    tiff, _ = testing.encoded_image("TIFF")
    with pytest.raises(ValueError, match="is a TIFF image; the model decodes only JPEG, PNG, GIF, BMP"):
        decode.image_header(tiff)


def test_find_undecodable_names_the_broken_image():
    good, _ = testing.encoded_image("JPEG", size=(64, 64))
    truncated = good[: len(good) // 2]  # header intact, data cut: only a full decode finds it
    decode.image_header(truncated)
    assert decode.find_undecodable([good, good]) is None
    index, message = decode.find_undecodable([good, truncated, good])
    assert index == 1 and "{{" not in message and "jpeg" in message.lower()


def reference(data_bytes, size, crop):
    image = tf.io.decode_image(data_bytes, channels=3, expand_animations=False).numpy()
    if crop == "center":
        h, w = image.shape[:2]
        s = min(h, w)
        image = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return tf.image.resize(image, (size, size), antialias=True).numpy()


@pytest.mark.parametrize("crop", ["none", "center"])
def test_decode_resize_fast_paths_match_a_full_decode(crop):
    for size in ((901, 700), (300, 460), (90, 70)):  # JPEG scaled by 1/4, 1/2 and 1 while decoding
        image = testing.smooth_image(size)
        for fmt in ("JPEG", "PNG"):
            encoded = testing.encode_image(image, fmt, quality=95) if fmt == "JPEG" else testing.encode_image(image, fmt)
            out = decode.decode_resize(tf.constant(encoded), 64, crop)
            assert out.shape == (64, 64, 3) and out.dtype == tf.uint8
            assert np.abs(out.numpy() - reference(encoded, 64, crop)).mean() < 2.0, (size, fmt)
            if fmt == "PNG":  # no fast path: exactly the antialiased resize, rounded
                np.testing.assert_array_equal(out.numpy(), np.floor(reference(encoded, 64, crop) + 0.5))
    with pytest.raises(ValueError, match="crop must be one of"):
        decode.decode_resize(tf.constant(b""), 64, "random")



@pytest.mark.parametrize("mode, pil_filter", [("pil_bilinear", "BILINEAR"), ("pil_bicubic", "BICUBIC")])
def test_pil_modes_match_pil_on_the_reference_photos(mode, pil_filter):
    """The official train.py resizes with PIL's bilinear filter, infer.py with its bicubic
    default: each mode is within half a grey level of the filter it mirrors (and the fast
    mode is not)."""
    folder = testing.shared_path("reference", "images")
    photos = [open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))]
    decoded = decode.decode_images(tf.constant(photos), 224, "none", mode).numpy()
    fast = decode.decode_images(tf.constant(photos), 224).numpy()
    for data, ours, quick in zip(photos, decoded, fast):
        with Image.open(io.BytesIO(data)) as image:
            reference = np.asarray(image.convert("RGB").resize((224, 224), getattr(Image, pil_filter)), np.float32)
        assert np.abs(ours - reference).mean() < 0.5
        assert np.abs(quick - reference).mean() > 1.0
    centred = decode.decode_images(tf.constant(photos[:1]), 32, "center", mode).numpy()
    assert centred.shape == (1, 32, 32, 3) and np.array_equal(centred, np.round(centred))
    with pytest.raises(ValueError, match="decode_mode must be one of"):
        decode.decode_resize(tf.constant(photos[0]), 32, "none", "pil_lanczos")


if __name__ == "__main__":
    testing.run(__file__)
