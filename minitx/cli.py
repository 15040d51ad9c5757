"""`minitx ...` subcommands. Thin: parse flags, build the recipe's config dataclass, call the recipe.

Each recipe module exposes a flat config dataclass; `add_config_arguments` maps its fields one to one onto
`--flag-name` options, so the CLI never grows an 80-argument constructor of its own.

Errors (docs/training.md, "The command line"): a user error prints one line `minitx: error: ...` and exits 2;
a run that diverges exits 1 the same way; `--debug` (anywhere on the line) or MINITX_DEBUG=1 adds the traceback.
Ctrl-C / SIGTERM during training save the current step and exit 130 / 143 with the command that resumes.
A config command refuses an out_dir that already holds a run unless --resume or --overwrite.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import contextlib
import importlib
import os
import shlex
import sys
import traceback
import warnings
import types
import typing
from typing import Any, Sequence

# subcommand -> ("module:ConfigClass", "module:function", help). Imported lazily so `minitx --help` is instant
# and a CPU-only install never imports Triton.
COMMANDS: dict[str, tuple[str | None, str, str]] = {
    "demo": (None, "minitx.recipes.finetune.demo:demo_main",
             "the quickstart: pretrain on the built-in language, then LoRA fine-tune a classifier"),
    "pretrain": ("minitx.recipes.pretrain.config:PretrainConfig", "minitx.recipes.pretrain.recipe:run_pretraining",
                 "masked-language-model pretraining (built-in corpus or --text files)"),
    "fill-mask": (None, "minitx.recipes.pretrain.fill_mask:fill_mask_main",
                  "top-k predictions for each [MASK] in a text"),
    "finetune": ("minitx.recipes.finetune.config:FinetuneConfig", "minitx.recipes.finetune.recipe:run_finetuning",
                 "fine-tune a pretrained checkpoint for classification (full, lora, adapter, bitfit)"),
    "classify": (None, "minitx.recipes.finetune.inference:classify_main",
                 "classify texts with a fine-tuned checkpoint"),
    "bench": (None, "minitx.bench.cli:bench_main", "benchmarks: `minitx bench attention|training ...`"),
    "export": (None, "minitx.recipes.export:export_main",
               "write a run as a Hugging Face checkpoint directory (or, with --peft, a PEFT adapter directory)"),
    "train-lm": ("minitx.recipes.lm.recipe:LMConfig", "minitx.recipes.lm.recipe:run_lm",
                 "causal language modelling (GPT): --corpus shakespeare with a character vocabulary, or --text"),
    "generate": (None, "minitx.recipes.lm.generate:generate_main",
                 "stream text from a train-lm run: generate RUN \"prompt\""),
    "check": (None, "minitx.conformance.runner:check_main",
              "check your own implementation (ADAPTERS.py) against minitx's reference math"),
    "explain": (None, "minitx.recipes.explain:explain_main",
                "figures of a run's attention, rollout and logit lens on a text: explain RUN \"text\""),
    "train-seq2seq": ("minitx.recipes.seq2seq.recipe:Seq2SeqConfig", "minitx.recipes.seq2seq.recipe:run_seq2seq",
                      "the original Transformer (encoder-decoder): the built-in dates task or --task text"),
    "translate": (None, "minitx.recipes.seq2seq.translate:translate_main",
                  "translate with a train-seq2seq run: translate RUN \"text\" [--num-beams 4]"),
}


def _resolve(spec: str) -> Any:
    module_name, attr = spec.split(":")
    return getattr(importlib.import_module(module_name), attr)


def _field_type(field: dataclasses.Field, hints: dict[str, Any]) -> tuple[Any, bool]:
    """(scalar type, is_list) for a dataclass field, from its resolved annotation; `X | None` counts as X."""
    tp = hints[field.name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X] and X | None alike
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if args else str
    if typing.get_origin(tp) in (list, tuple, collections.abc.Sequence):
        inner = typing.get_args(tp)
        return (inner[0] if inner else str), True
    return tp, False


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One `--field-name` option per dataclass field; the field's default and its `help` metadata carry over.

    Field metadata may add `aliases` (extra flags, e.g. `--from`) and `choices` (a sequence, or a callable that
    returns one when the parser is built, such as `available_backends`).
    """
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        flags = ["--" + field.name.replace("_", "-"), *field.metadata.get("aliases", ())]
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        help_text = field.metadata.get("help", "")
        scalar, is_list = _field_type(field, hints)
        if scalar is bool and not is_list:
            parser.add_argument(*flags, dest=field.name, default=default,
                                action=argparse.BooleanOptionalAction, help=help_text)
            continue
        kwargs: dict[str, Any] = dict(dest=field.name, default=default, help=f"{help_text} (default: {default})")
        if "choices" in field.metadata:  # a callable is asked now, e.g. the attention backends registered
            choices = field.metadata["choices"]
            kwargs["choices"] = choices() if callable(choices) else choices
        if is_list:
            kwargs["nargs"] = "+"
        parser.add_argument(*flags, type=scalar if scalar in (int, float, str) else str, **kwargs)


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    return config_cls(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minitx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MINITX_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    with _warnings_as_lines():
        try:
            return _run(argv)
        except KeyboardInterrupt as e:  # TrainingInterrupted (saved, resumable) or a Ctrl-C before training
            return _interrupted(e, argv, debug)
        except Exception as e:  # noqa: BLE001 (user errors get one line; anything else is a bug: re-raised)
            code = _error_code(e)
            if code is None:
                raise
            if debug:
                traceback.print_exc()
            print(f"minitx: error: {' '.join(str(e).split())}", file=sys.stderr)
            return code


def _error_code(e: Exception) -> int | None:
    """2 for a user error (a bad value, file or checkpoint), 1 for a run that diverged, None for anything else."""
    train = sys.modules.get("minitx.training.loop")
    if train is not None and isinstance(e, train.NonFiniteLossError):
        return 1
    checkpoint = sys.modules.get("minitx.training.checkpoint")
    if isinstance(e, (ValueError, TypeError, OSError)) or (
            checkpoint is not None and isinstance(e, checkpoint.CheckpointError)):
        return 2
    return None


def _interrupted(e: KeyboardInterrupt, argv: list[str], debug: bool) -> int:
    if debug:
        traceback.print_exc()
    checkpoint, code = getattr(e, "checkpoint", None), getattr(e, "exit_code", 130)
    if not hasattr(e, "step"):
        print("minitx: interrupted (outside a training step: nothing was saved just now)", file=sys.stderr)
        return code
    name = argv[0] if argv else ""
    if checkpoint is None:
        how = "nothing was saved (out_dir is empty)"
    elif COMMANDS.get(name, (None,))[0] is not None:
        rest = [a for a in argv[1:] if a not in ("--overwrite", "--no-resume", "--resume")]
        how = f"resume with: {shlex.join(['minitx', name, *rest, '--resume'])}"
    else:
        how = f"the state after that step is in {checkpoint}"
    print(f"minitx: {e}; {how}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _warnings_as_lines():
    """Warnings as `minitx: warning: ...` lines, without the source line Python shows by default."""
    before = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"minitx: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = before


def _run(argv: list[str]) -> int:
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    config_spec, func_spec, help_text = COMMANDS[name]
    func = _resolve(func_spec)
    if config_spec is None:
        # The subcommand parses its own flags (it has positional arguments or sub-subcommands).
        if name != "bench" and "OMP_NUM_THREADS" not in os.environ:
            import torch
            torch.set_num_threads(1)  # the thread policy of every command (the recipes' --threads default)
        return int(func(rest, prog=f"minitx {name}") or 0)
    config_cls = _resolve(config_spec)
    sub_parser = argparse.ArgumentParser(prog=f"minitx {name}", description=help_text)
    add_config_arguments(sub_parser, config_cls)
    args = sub_parser.parse_args(rest)
    config = config_from_args(config_cls, args)
    if all(hasattr(config, f) for f in ("out_dir", "resume", "overwrite")):
        from minitx.training.guards import check_out_dir, run_lock
        with run_lock(config.out_dir):  # one writer per run directory, from the check to the last file
            check_out_dir(config)
            func(config)
        return 0
    func(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
