"""Options that several ``dsm`` commands share, declared once (each command's parser adds them)."""

from __future__ import annotations

import argparse

WORKSPACE_HELP = "workspace folder (default $DSM_WORKSPACE, else ./dsm-runs)"
ADDRESS_HELP = "Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)"


def add_workspace(parser: argparse.ArgumentParser, help: str = WORKSPACE_HELP) -> None:
    """``--workspace``: where runs, data, scores and the MLflow store go (dsm.runtime.tracking.workspace_dir)."""
    parser.add_argument("--workspace", default=None, help=help)


def add_address(parser: argparse.ArgumentParser, help: str = ADDRESS_HELP) -> None:
    """``--address``: the Ray cluster to join or submit to."""
    parser.add_argument("--address", default=None, help=help)


def add_gpu_options(parser: argparse.ArgumentParser, gpu_help: str) -> None:
    """``--gpu`` and ``--resource-timeout``: GPUs are asked of the cluster (dsm.runtime.resources),
    which may take a while to provide them when it grows on demand."""
    from dsm.runtime.resources import DEFAULT_TIMEOUT_S, RESOURCE_TIMEOUT_FLAG

    parser.add_argument("--gpu", action="store_true", help=gpu_help)
    parser.add_argument(RESOURCE_TIMEOUT_FLAG, type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="seconds to wait for a cluster that can grow to provide the workers, then fail "
                             f"naming what never came (default {DEFAULT_TIMEOUT_S:g})")


STORAGE_HELP = ("where runs keep checkpoints and exports, e.g. s3://bucket/runs (default $DSM_STORAGE, else "
                "<workspace>/runs); on a multi-node cluster a bucket, or a shared folder")


def add_storage(parser: argparse.ArgumentParser, help: str = STORAGE_HELP) -> None:
    """``--storage``: where Ray Train / Tune keep checkpoints and exports (dsm.runtime.storage.storage_root)."""
    parser.add_argument("--storage", metavar="URL", default=None, help=help)


class _RenamedOption(argparse.Action):
    """An option's old name, kept for one release: it sets what the new name sets and says so on
    stderr. Hidden from --help."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print(f"dsm: {option_string} is now {self.new}; the old name goes in the next release",
              file=sys.stderr, flush=True)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_old_name(parser: argparse.ArgumentParser, old: str, new: argparse.Action, const=None) -> None:
    """Accept ``old`` for the option ``new`` (the action ``add_argument`` returned) for one more
    release; ``const``: the value an old switch stands for (it then takes no value)."""
    switch = {"nargs": 0, "const": const} if const is not None else {"type": new.type, "metavar": new.metavar}
    parser.add_argument(old, dest=new.dest, action=_RenamedOption, new=new.option_strings[-1],
                        help=argparse.SUPPRESS, **switch)


def csv_list(text: str) -> list[str]:
    """An argparse ``type``: ``"a, b,"`` -> ``["a", "b"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_fields(parser: argparse.ArgumentParser, model, exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per field of the pydantic ``model``, with its description and
    default as help: booleans as switches, lists comma-separated. Flags default to None, so
    that :func:`fields_from` passes only what was given and the model keeps its own defaults
    and validation."""
    import types
    import typing

    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        shown = ",".join(map(str, field.default)) if isinstance(field.default, list) else field.default
        default = "" if field.default is None or field.default is False else f" (default {shown})"
        help_ = f"{field.description or name.replace('_', ' ')}{default}"
        ann = field.annotation
        options = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
        kinds = {typing.get_origin(a) or a for a in options}  # X | None -> {X, NoneType}; list[T] -> {list}
        if bool in kinds:
            parser.add_argument(flag, action="store_true", default=None, help=help_)
        elif list in kinds:
            parser.add_argument(flag, type=csv_list, help=help_)
        elif int in kinds:
            parser.add_argument(flag, type=int, metavar="N", help=help_)
        else:
            parser.add_argument(flag, help=help_)


def fields_from(args: argparse.Namespace, model) -> dict:
    """The fields of ``model`` that were given on the command line (by :func:`add_fields`)."""
    return {k: v for k in model.model_fields if (v := getattr(args, k, None)) is not None}
