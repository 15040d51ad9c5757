"""Using a trained causal LM: load a `train-lm` run safely, and stream text from it (`minitx generate`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from minitx.generation.generate import iter_generate
from minitx.models.gpt import GPT, GPTConfig
from minitx.models.llama import Llama, LlamaConfig
from minitx.tokenizers.char import CharTokenizer
from minitx.training.checkpoint import check_state_dict, read_run_checkpoint

__all__ = ["load_lm", "tokenizer_from_state", "generate_main"]


def tokenizer_from_state(state: dict) -> Any:
    """The tokenizer a run's checkpoint describes: {"type": "char", ...} or {"type": "bpe", ...}."""
    kind = state.get("type") if isinstance(state, dict) else None
    if kind == "char":
        return CharTokenizer.from_state(state)
    if kind == "bpe":
        from minitx.tokenizers.bpe import ByteBPETokenizer
        return ByteBPETokenizer.from_state(state)
    raise ValueError(f"tokenizer: expected a state of type 'char' or 'bpe', got {kind!r}")


ARCHS = {"gpt": (GPT, GPTConfig), "llama": (Llama, LlamaConfig)}


def load_lm(path: str | Path) -> tuple[GPT | Llama, Any]:
    """The GPT or Llama (`--arch`; eval mode) and tokenizer of a run directory or its checkpoint.pt; never executes
    code (manifest-verified, weights_only load)."""
    path = Path(path)
    ckpt, payload = read_run_checkpoint(path, argument="run", kind="train-lm run directory")
    extra = payload.get("extra_state") or {}
    if "model_config" not in extra or "tokenizer" not in extra:
        raise ValueError(f"run: {str(path)!r} is not a train-lm checkpoint (no model_config and tokenizer)")
    arch = extra.get("arch", "gpt")  # runs from before --arch are GPTs
    if arch not in ARCHS:
        raise ValueError(f"run: {str(path)!r} holds an unknown architecture {arch!r} (expected one of {sorted(ARCHS)})")
    model_class, config_class = ARCHS[arch]
    model = model_class(config_class.from_dict(extra["model_config"]))
    check_state_dict(model, payload["model"], ckpt)
    model.load_state_dict(payload["model"])
    return model.eval(), tokenizer_from_state(extra["tokenizer"])


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Stream text from a train-lm run, token by token.")
    p.add_argument("run", help="run directory (or its checkpoint.pt)")
    p.add_argument("prompt", nargs="?", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=300, help="tokens to generate (default: 300)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with mass >= p")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every token")
    return p


def generate_main(argv: Sequence[str], prog: str = "minitx generate") -> int:
    """`minitx generate RUN "prompt"`: print the prompt, then each token as soon as it is chosen."""
    parser = _parser(prog)
    args = parser.parse_args(list(argv))
    try:
        model, tokenizer = load_lm(args.run)
        ids = torch.tensor([tokenizer.encode(args.prompt)], dtype=torch.long)
        if ids.shape[1] == 0:
            raise ValueError("prompt: expected at least one token, got an empty prompt")
        tokens = iter_generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                               args.seed, use_cache=not args.no_cache)
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        pending: list[int] = []  # a BPE token may end inside a multi-byte character: wait for the rest
        for token in tokens:
            pending.append(int(token[0]))
            piece = tokenizer.decode(pending)
            if "\ufffd" not in piece or len(pending) >= 4:
                sys.stdout.write(piece)
                sys.stdout.flush()
                pending = []
        if pending:
            sys.stdout.write(tokenizer.decode(pending))
        sys.stdout.write("\n")
        sys.stdout.flush()
    except ValueError as err:
        parser.error(str(err))
    return 0
