"""``dsm data``: prepare the built-in data sets, convert yours, verify shards, list what exists.

Registered into the top-level parser by :func:`register`. Handlers import their heavy
dependencies themselves and return an exit code: 0 ok, 1 verification found problems,
2 bad input (the message names the file or option).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dsm.cliopts import add_fields, add_workspace, csv_list, fields_from
from dsm.plumbing.store import Location


def _validate(cls, data: dict):
    from pydantic import ValidationError

    from dsm.plumbing.config import ConfigError

    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [f"  --{'-'.join(map(str, err['loc'])).replace('_', '-') or '?'}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid options:\n" + "\n".join(lines)) from None


def _summary(manifests: dict) -> None:
    for split, m in manifests.items():
        c, h, w = m.shape
        print(f"{split}: {m.num_samples} samples of {c}x{h}x{w} in {len(m.shards)} shards")


def _prepare(args: argparse.Namespace) -> int:
    from dsm.data.sources import PrepareConfig, get_dataset, prepare

    get_dataset(args.name)  # unknown names fail before anything else
    cfg = _validate(PrepareConfig, fields_from(args, PrepareConfig))
    if args.out:
        out = args.out  # a folder or a URL (dsm.plumbing.store)
    else:
        from dsm.runtime.tracking import workspace_dir

        out = workspace_dir(args.workspace) / "data" / args.name
    manifests = prepare(args.name, out, cfg, overwrite=args.force, progress=not args.quiet)
    _summary(manifests)
    print(f"wrote {Location.of(out)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from dsm.data import convert

    if args.kind == "imagenet64":
        manifests = convert.convert_imagenet64(args.src, args.out, size=args.size, gray=bool(args.gray),
                                               splits=tuple(args.splits) if args.splits else None,
                                               shard_size=args.shard_size, overwrite=args.force,
                                               progress=not args.quiet)
    else:
        if args.size is None:
            from dsm.plumbing.config import ConfigError

            raise ConfigError("convert folder needs --size (the output side in pixels, e.g. --size 64)")
        m = convert.convert_folder(args.src, args.out, size=args.size, split=args.split, gray=bool(args.gray),
                                   crop=args.crop, seed=args.seed, shard_size=args.shard_size,
                                   workers=args.workers, skip_bad=args.skip_bad, overwrite=args.force,
                                   progress=not args.quiet)
        manifests = {m.split: m}
    _summary(manifests)
    print(f"wrote {Location.of(args.out)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from dsm.data.shards import Manifest
    from dsm.data.verify import split_folders, verify

    problems = verify(args.dir, decode=not args.quick, progress=not args.quiet)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    for folder in split_folders(args.dir):
        m = Manifest.load(folder)
        print(f"ok {folder}: {m.num_samples} samples in {len(m.shards)} shards"
              + (" (hashes and sizes only)" if args.quick else ""))
    return 0


def _list(args: argparse.Namespace) -> int:
    from dsm.data.sources import DATASETS

    for name, ds in DATASETS.items():
        print(f"{name:14s} {ds.description}")
    data_dir = Path(args.workspace or os.environ.get("DSM_WORKSPACE", "dsm-runs")) / "data"
    prepared = sorted(m.parent for m in data_dir.glob("*/*/manifest.json")) if data_dir.is_dir() else []
    if prepared:
        print(f"\nprepared in {data_dir}:")
        for split in prepared:
            print(f"  {split.relative_to(data_dir)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dsm data ...`` to the top-level subcommands."""
    from dsm.data.sources import PrepareConfig

    data = sub.add_parser("data", help="prepare, convert and verify WebDataset shards",
                          description="Prepare the built-in data sets, convert ImageNet64 or an image folder "
                                      "to WebDataset shards with a manifest, and verify shards. See docs/data.md.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    lst = dsub.add_parser("list", help="list the built-in data sets and what the workspace holds")
    add_workspace(lst)
    lst.set_defaults(func=_list)

    prep = dsub.add_parser("prepare", help="write a built-in data set as shards (offline)",
                           description="Write a built-in data set (digits, fashion-mnist, mnist, patches) as "
                                       "WebDataset shards: OUT/<split>/manifest.json and OUT/<split>/*.tar.")
    prep.add_argument("name", help="data set name (dsm data list)")
    prep.add_argument("--out", help="output folder or URL, e.g. s3://bucket/data/NAME (default <workspace>/data/NAME)")
    add_workspace(prep)
    add_fields(prep, PrepareConfig)
    prep.add_argument("--force", action="store_true", help="replace existing shards of the same split")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=_prepare)

    _register_convert(dsub)

    ver = dsub.add_parser("verify", help="check shards against their manifest; list every problem",
                          description="Check a split folder (or every split folder under DIR) against its "
                                      "manifest: hashes, sizes, counts, image shapes, keys. Exit 1 on problems.")
    ver.add_argument("dir", help="split folder, or a folder of split folders; or a URL (an http(s) one: the split)")
    ver.add_argument("--quick", action="store_true", help="sizes and hashes only, no decoding")
    ver.add_argument("--quiet", action="store_true", help="no progress bar")
    ver.set_defaults(func=_verify)


def _register_convert(dsub) -> None:
    """``dsm data convert imagenet64|folder``."""
    conv = dsub.add_parser("convert", help="convert ImageNet64 batches or an image folder to shards")
    csub = conv.add_subparsers(dest="kind", required=True, metavar="KIND")
    inet = csub.add_parser("imagenet64", help="the official downsampled ImageNet (pickled or .npz batches)",
                           description="Convert train_data_batch_1..10 and val_data (pickled dicts with 'data' "
                                       "uint8 (N, 12288) planar CHW and 'labels' 1..1000, or .npz) to "
                                       "OUT/train and OUT/val. Labels are stored 0-based.")
    inet.add_argument("src", help="folder holding the batch files")
    inet.add_argument("out", help="output folder or URL (s3://, gs://, file://)")
    inet.add_argument("--splits", type=csv_list, help="comma-separated: train,val (default both)")
    _conversion_options(inet)
    inet.set_defaults(func=_convert)
    fold = csub.add_parser("folder", help="an ImageNet-style folder of JPEG/PNG images, class = sub-folder",
                           description="Convert SRC/<class>/*.{jpg,jpeg,png} to OUT/<split>, each image "
                                       "center-cropped and box-downsampled to --size.")
    fold.add_argument("src", help="image folder")
    fold.add_argument("out", help="output folder or URL (s3://, gs://, file://)")
    fold.add_argument("--split", default="train", help="split name (default train)")
    fold.add_argument("--crop", choices=["center", "none"], default="center",
                      help="center: central square first; none: squash the whole image (default center)")
    fold.add_argument("--seed", type=int, default=0, help="file order shuffle seed (default 0)")
    fold.add_argument("--workers", type=int, help="decoding processes (default min(8, CPUs))")
    fold.add_argument("--skip-bad", action="store_true", help="warn about unreadable images instead of stopping")
    _conversion_options(fold)
    fold.set_defaults(func=_convert)


def _conversion_options(p: argparse.ArgumentParser) -> None:
    """The output options every ``dsm data convert`` kind takes."""
    p.add_argument("--size", type=int, help="output side in pixels (box down-sampling; default: the images' own)")
    p.add_argument("--gray", action="store_true", default=None, help="convert to grayscale (BT.601 luma)")
    p.add_argument("--shard-size", type=int, help="samples per shard (default: up to 2000, at least 16 shards)")
    p.add_argument("--force", action="store_true", help="replace existing shards of the same split")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
