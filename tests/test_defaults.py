"""The default recipe of each freeze preset: fields left at None, filled in by ``resolved()``."""

from __future__ import annotations

import json

import pytest

from tlcourse.cli import build_parser
from tlcourse.config import PRESET_DEFAULTS, PRESETS, TrainConfig
from tlcourse.engine import train


@pytest.mark.parametrize("freeze", PRESETS)
def test_fields_left_at_none_take_the_preset_recipe(freeze):
    config = TrainConfig(freeze=freeze)
    assert all(getattr(config, name) is None for name in PRESET_DEFAULTS[freeze])
    resolved = config.resolved()
    assert {name: getattr(resolved, name) for name in PRESET_DEFAULTS[freeze]} == PRESET_DEFAULTS[freeze]
    assert TrainConfig(freeze=freeze, lr=0.5, epochs=2).resolved().lr == 0.5      # a given value wins
    assert resolved.resolved() == resolved


def test_the_command_line_shows_each_presets_default():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(train_parser.format_help().split())
    for name in ("epochs", "lr"):
        shown = ", ".join(f"{preset} {values[name]}" for preset, values in PRESET_DEFAULTS.items())
        assert f"(default: {shown})" in text


def test_a_run_records_the_values_it_used(tiny_data, tmp_path):
    result = train(TrainConfig(data_dir=str(tiny_data), weights=None, image_size=32, epochs=1, device="cpu",
                               progress="none", output_dir=str(tmp_path), probe=False))
    recorded = json.loads((result.run_dir / "args.json").read_text())
    for name, value in PRESET_DEFAULTS["head"].items():
        expected = 1 if name == "epochs" else value
        assert recorded[name] == expected and getattr(result.config, name) == expected


def test_none_on_the_command_line_is_a_choice_where_it_is_one():
    """`--scheduler none` turns the schedule off (a choice); `--weights none` means random weights (None)."""
    import argparse

    from tlcourse.commands.config_options import add_config_arguments, config_overrides

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    overrides = config_overrides(parser.parse_args(["--scheduler", "none", "--weights", "none"]))
    assert overrides == {"scheduler": "none", "weights": None}
    assert TrainConfig(**overrides).resolved().scheduler == "none"   # not the head's default cosine
