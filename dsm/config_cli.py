"""``dsm config ...``: the config files' own description, registered into the top-level parser by
:func:`register`.

``dsm config schema`` prints the JSON Schema of a training config (:class:`dsm.train.config.TrainConfig`)
or, with ``--kind tune``, of a sweep spec (:class:`dsm.tune.spec.SweepSpec`): every field with its
type, default, range and description, for an editor's YAML language server to complete and check
from. The copies under ``docs/schema/`` are this command's output (tests/test_config_cli.py keeps
them in step with the models). A root module: it imports the training and tuning packages.
"""

from __future__ import annotations

import argparse
import json

# --kind -> the copy of its output that the docs ship
SCHEMA_FILES = {"train": "docs/schema/train-config.schema.json", "tune": "docs/schema/tune-spec.schema.json"}


def config_schema(kind: str = "train") -> dict:
    """The JSON Schema (pydantic's ``model_json_schema()``) of a training config or a sweep spec."""
    if kind == "train":
        from dsm.train.config import TrainConfig

        return TrainConfig.model_json_schema()
    if kind == "tune":
        from dsm.tune.spec import SweepSpec

        return SweepSpec.model_json_schema()
    raise ValueError(f"unknown schema kind {kind!r}; known: {', '.join(SCHEMA_FILES)}")


def schema_text(kind: str = "train") -> str:
    """:func:`config_schema` as the command prints it: indented, keys sorted, a final newline."""
    return json.dumps(config_schema(kind), indent=2, sort_keys=True) + "\n"


def _schema(args: argparse.Namespace) -> int:
    print(schema_text(args.kind), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dsm config schema`` to the top-level subcommands."""
    p = sub.add_parser("config", help="describe the config files (JSON Schema for editors)",
                       description="Describe the YAML files dsm reads: a training config (dsm train) or a sweep "
                                   "spec (dsm tune).")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sch = csub.add_parser("schema", help="print the JSON Schema of a training config or a sweep spec",
                          description="Print the JSON Schema of a training config (or, with --kind tune, of a "
                                      "sweep spec): each field's type, default, range and description. Point an "
                                      "editor's YAML language server at it with a first line "
                                      "`# yaml-language-server: $schema=PATH` (docs/training.md). "
                                      f"The copies shipped are {SCHEMA_FILES['train']} and {SCHEMA_FILES['tune']}.")
    sch.add_argument("--kind", choices=tuple(SCHEMA_FILES), default="train",
                     help="train: a training config (default); tune: a sweep spec")
    sch.set_defaults(func=_schema)
