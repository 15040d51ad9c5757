"""Using a trained sequence-to-sequence run: load it safely and translate (`minitx translate RUN "text"`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from minitx.models.transformer import Transformer, TransformerConfig
from minitx.recipes.seq2seq.data import CharVocab
from minitx.recipes.seq2seq.recipe import translate_batch
from minitx.training.checkpoint import check_state_dict, read_run_checkpoint

__all__ = ["load_seq2seq", "translate_main"]


def load_seq2seq(path: str | Path) -> tuple[Transformer, CharVocab]:
    """The Transformer (eval mode) and vocabulary of a train-seq2seq run directory or its checkpoint.pt;
    never executes code (manifest-verified, weights_only load)."""
    ckpt, payload = read_run_checkpoint(path, argument="run", kind="train-seq2seq run directory")
    extra = payload.get("extra_state") or {}
    if "model_config" not in extra or extra.get("tokenizer", {}).get("type") != "char-seq2seq":
        raise ValueError(f"run: {str(path)!r} is not a train-seq2seq checkpoint (no model_config and vocabulary)")
    model = Transformer(TransformerConfig.from_dict(extra["model_config"]))
    check_state_dict(model, payload["model"], ckpt)
    model.load_state_dict(payload["model"])
    return model.eval(), CharVocab.from_state(extra["tokenizer"])


def translate_main(argv: Sequence[str], prog: str = "minitx translate") -> int:
    """`minitx translate RUN "text" ["text" ...]`: one output line per input text."""
    p = argparse.ArgumentParser(prog=prog, description="Translate texts with a train-seq2seq run.")
    p.add_argument("run", help="run directory (or its checkpoint.pt)")
    p.add_argument("texts", nargs="+", help="source texts")
    p.add_argument("--num-beams", type=int, default=4, help="beam search width (1 = greedy; default: 4)")
    p.add_argument("--max-length", type=int, default=None, help="longest output in tokens (default: the model's)")
    args = p.parse_args(list(argv))
    try:
        model, vocab = load_seq2seq(args.run)
        if args.max_length is not None and not 1 <= args.max_length < model.config.max_position:
            raise ValueError(f"max_length: expected 1..{model.config.max_position - 1}, got {args.max_length}")
        for text in translate_batch(model, vocab, args.texts, args.num_beams, args.max_length):
            print(text)
    except ValueError as err:
        p.error(str(err))
    return 0
