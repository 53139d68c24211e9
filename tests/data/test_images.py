"""PNG round trips, box down-sampling and grayscale on uint8 arrays."""

import numpy as np
import pytest
from PIL import Image

from dsm.data.images import box_downsample, decode_png, encode_png, resize_box, to_gray


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (6, 4, 3)])
def test_png_round_trip_is_lossless(shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    back = decode_png(encode_png(img))
    assert back.dtype == np.uint8
    assert back.shape == (shape[0], shape[1], shape[2] if len(shape) == 3 else 1)
    np.testing.assert_array_equal(back.reshape(img.shape), img)


def test_encode_refuses_float_and_bad_channels():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((4, 4, 2), np.uint8))


def test_decode_refuses_other_formats_and_modes():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG")
    with pytest.raises(ValueError, match="JPEG"):
        decode_png(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="RGBA"):
        decode_png(buf.getvalue())


def test_box_downsample_is_the_block_mean():
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    y = box_downsample(x, 2)
    assert y.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(y[0, :, :, 0], np.rint([[2.5, 4.5], [10.5, 12.5]]).astype(np.uint8))
    with pytest.raises(ValueError, match="not a multiple"):
        box_downsample(np.zeros((1, 6, 6, 1), np.uint8), 4)


def test_box_downsample_matches_pil_reduce_within_rounding():
    img = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    ours = box_downsample(img, 4).astype(int)
    pil = np.asarray(Image.fromarray(img).reduce(4)).astype(int)
    assert np.abs(ours - pil).max() <= 1


def test_gray_is_bt601_luma_like_pil():
    img = np.random.default_rng(2).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    g = to_gray(img)
    assert g.shape == (8, 8, 1)
    pil = np.asarray(Image.fromarray(img).convert("L")).astype(int)
    assert np.abs(g[..., 0].astype(int) - pil).max() <= 1


def test_resize_box_crops_the_centre_square():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 5:15] = 200  # the central 10x10 square is bright, the sides dark
    out = resize_box(Image.fromarray(img), 5, crop="center")
    assert out.shape == (5, 5, 3) and (out == 200).all()
    squashed = resize_box(Image.fromarray(img), 5, crop="none")
    assert squashed.min() < 200
