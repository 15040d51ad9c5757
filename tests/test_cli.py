"""minitx.cli: dataclass fields become flags of the right type, whatever way the annotation is written."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from minitx.cli import add_config_arguments, config_from_args, main


@dataclasses.dataclass
class Example:
    count: int | None = None                      # PEP 604 union: must parse as int, not stay a str
    rate: typing.Optional[float] = None           # the typing spelling of the same thing
    names: list[str] | None = None                # an optional list: nargs="+"
    betas: tuple[float, float] = (0.9, 0.99)
    fast: bool = False
    mode: str = dataclasses.field(default="a", metadata={"help": "which", "choices": ["a", "b"]})


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Example)
    return config_from_args(Example, parser.parse_args(argv))


def test_optional_fields_parse_to_their_inner_type():
    config = parse(["--count", "5", "--rate", "0.5", "--names", "x", "y", "--betas", "0.8", "0.9", "--fast"])
    assert config.count == 5 and type(config.count) is int
    assert config.rate == 0.5 and type(config.rate) is float
    assert config.names == ["x", "y"]
    assert config.betas == [0.8, 0.9] and all(type(b) is float for b in config.betas)
    assert config.fast is True


def test_defaults_carry_over_and_choices_are_enforced():
    assert parse([]) == Example()
    with pytest.raises(SystemExit):
        parse(["--mode", "c"])
    with pytest.raises(SystemExit):
        parse(["--count", "five"])


def test_unknown_command_is_refused_and_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("pretrain", "finetune", "bench", "demo"))


def test_backend_choices_come_from_the_registry():
    """A backend registered in the process is a valid --attention-backend of every recipe; a name that is
    not registered is refused by argparse."""
    from minitx.attention.backends import _BACKENDS, get_backend, register_backend
    from minitx.recipes.lm.recipe import LMConfig
    from minitx.recipes.pretrain.config import PretrainConfig

    register_backend("cli_spy", get_backend("math"))
    try:
        for config_cls in (PretrainConfig, LMConfig):
            parser = argparse.ArgumentParser()
            add_config_arguments(parser, config_cls)
            assert parser.parse_args(["--attention-backend", "cli_spy"]).attention_backend == "cli_spy"
            with pytest.raises(SystemExit):
                parser.parse_args(["--attention-backend", "not_registered"])
    finally:
        _BACKENDS.pop("cli_spy")
