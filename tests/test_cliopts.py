"""Shared CLI options, and flags made from a config model's fields (declared once)."""

import argparse

from dsm.cliopts import add_fields, fields_from
from dsm.data.sources import PrepareConfig


def test_every_prepare_option_is_a_flag_and_only_given_flags_reach_the_model():
    p = argparse.ArgumentParser()
    add_fields(p, PrepareConfig)
    flags = {a.dest for a in p._actions if a.option_strings and a.dest != "help"}
    assert flags == set(PrepareConfig.model_fields)
    args = p.parse_args(["--splits", "train", "--gray", "--shard-size", "50", "--test-photos", "a.png,b.png"])
    given = fields_from(args, PrepareConfig)
    assert given == {"splits": ["train"], "gray": True, "shard_size": 50, "test_photos": ["a.png", "b.png"]}
    cfg = PrepareConfig.model_validate(given)
    assert cfg.seed == 0 and cfg.count == 10000  # the model's defaults, not the parser's
    assert "(default 0)" in next(a.help for a in p._actions if a.dest == "seed")
