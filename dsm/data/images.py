"""Image helpers on uint8 arrays: PNG bytes, integer box down-sampling, grayscale.

Layouts: one image is (H, W, C) uint8 with C = 1 or 3 (the PNG layout); a batch is
(N, H, W, C). The training stream turns them into float32 (C, H, W) in [0, 1] itself.
"""

from __future__ import annotations

import io

import numpy as np

# Luma weights of ITU-R BT.601, the ones PIL's convert("L") uses.
LUMA = np.array([0.299, 0.587, 0.114])


def as_hwc(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 1); (H, W, 1|3) unchanged. uint8 only: lossless PNG needs 8-bit input."""
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"an image must be (H, W), (H, W, 1) or (H, W, 3); got shape {image.shape}")
    return image


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """Lossless PNG bytes of an (H, W, C) or (H, W) uint8 image (mode L for C = 1, RGB for C = 3)."""
    from PIL import Image

    image = as_hwc(image)
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, C) uint8 with C = 1 for gray and 3 for colour, exactly as written.

    Decoded with PIL directly rather than webdataset's image handlers: those convert every
    image to one fixed mode (a gray shard would silently become 3-channel), and the shape
    must be checked against the manifest as stored.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as pil:
        if pil.format != "PNG":
            raise ValueError(f"expected PNG data, got {pil.format}")
        if pil.mode not in ("L", "RGB"):
            raise ValueError(f"PNG mode {pil.mode!r}: dsm shards hold 8-bit gray (L) or RGB images")
        arr = np.asarray(pil)
    return as_hwc(arr)


def to_gray(images: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W, 1) by BT.601 luma, rounded; 1-channel input is returned as is."""
    if images.shape[-1] == 1:
        return images
    if images.shape[-1] != 3:
        raise ValueError(f"to_gray needs 1 or 3 channels last, got shape {images.shape}")
    y = images.astype(np.float32) @ LUMA.astype(np.float32)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None]


def box_downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Box down-sampling by an integer factor: (..., H, W, C) uint8 -> (..., size, size, C) uint8.

    Each output pixel is the mean of a k x k block (k = H / size), rounded to nearest. H and W
    must be equal multiples of ``size``; this is done in numpy on whole batches (exact and
    vectorised), while arbitrary ratios (image folders) go through PIL's BOX filter.
    """
    *lead, h, w, c = images.shape
    if h != w:
        raise ValueError(f"box down-sampling needs square images, got {h}x{w}")
    if size == h:
        return images
    if size <= 0 or h % size:
        raise ValueError(f"cannot box-downsample {h}x{w} to {size}x{size}: {h} is not a multiple of {size}")
    k = h // size
    blocks = images.reshape(*lead, size, k, size, k, c).astype(np.float32)
    return np.rint(blocks.mean(axis=(-4, -2))).astype(np.uint8)


def resize_box(image: object, size: int, crop: str = "center") -> np.ndarray:
    """A PIL image -> (size, size, C) uint8 by PIL's BOX filter (area average).

    crop: ``center`` takes the central square first (keeps the aspect ratio); ``none``
    squashes the whole image to a square, as the official downsampled ImageNet did.
    """
    from PIL import Image

    pil: Image.Image = image  # type: ignore[assignment]
    if crop == "center":
        w, h = pil.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        pil = pil.crop((left, top, left + s, top + s))
    elif crop != "none":
        raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
    return as_hwc(np.asarray(pil.resize((size, size), Image.Resampling.BOX)))
