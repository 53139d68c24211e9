"""Noise seeded from each example's key, so results do not depend on batch layout.

An example's noise is a pure function of (salt, key): scoring the same image alone, in a
batch of 512, or on another Ray actor draws the same z.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' strings (blake2b: stable across processes and runs, unlike
    ``hash()`` of a str)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def key_seed(key: int | str, salt: str = "") -> int:
    """The seed of example ``key`` under ``salt``: ``derive_seed(salt, key)``."""
    return derive_seed(salt, key)


def _per_key(keys: Sequence[int | str], shape: tuple[int, ...], salt: str, dtype: torch.dtype,
             device: torch.device | str, draw) -> torch.Tensor:
    """Stack ``draw(shape, generator)`` for each key, the generator seeded by ``key_seed``."""
    out = torch.empty((len(keys), *shape), dtype=dtype)
    for i, k in enumerate(keys):
        out[i] = draw(shape, torch.Generator().manual_seed(key_seed(k, salt)))
    return out.to(device)


def keyed_normal(keys: Sequence[int | str], shape: tuple[int, ...], salt: str = "",
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of shape (len(keys), *shape), row i drawn from ``key_seed(keys[i])``."""
    return _per_key(keys, shape, salt, dtype, device,
                    lambda sh, g: torch.randn(sh, generator=g, dtype=dtype))


def keyed_rademacher(keys: Sequence[int | str], shape: tuple[int, ...], salt: str = "",
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Random signs (+1/-1) of shape (len(keys), *shape), seeded per key like :func:`keyed_normal`."""
    return _per_key(keys, shape, salt, dtype, device,
                    lambda sh, g: torch.randint(0, 2, sh, generator=g).to(dtype) * 2 - 1)


def keyed_uniform(keys: Sequence[int | str], shape: tuple[int, ...], salt: str = "",
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform [0, 1) draws of shape (len(keys), *shape), seeded per key like :func:`keyed_normal`."""
    return _per_key(keys, shape, salt, dtype, device, lambda sh, g: torch.rand(sh, generator=g, dtype=dtype))


def default_keys(n: int) -> list[int]:
    """Row indices 0..n-1, the keys of an un-keyed batch."""
    return list(range(n))
