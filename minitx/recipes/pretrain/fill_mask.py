"""Using a pretrained MLM: load a run directory safely, and ask it to fill in the blanks (`minitx fill-mask`).

`load_pretrained` is what the fine-tuning and export recipes start from.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from minitx.models.bert import BertConfig, BertForMaskedLM
from minitx.tokenizers.wordpiece import SPECIAL_TOKENS, WordPieceTokenizer
from minitx.training.checkpoint import (CheckpointError, check_state_dict, read_json_object, read_run_checkpoint,
                                        require_keys)

MASK = SPECIAL_TOKENS[4]  # "[MASK]", written literally in the text


def load_pretrained(path: str | Path) -> tuple[BertForMaskedLM, WordPieceTokenizer]:
    """The model and tokenizer of a run directory (or its checkpoint.pt), in eval mode; never executes code.

    The checkpoint is verified against its manifest and read with weights_only=True; the model config and the
    tokenizer come from its extra_state, or else from model_config.json / tokenizer.json beside it.
    """
    path = Path(path)
    ckpt, payload = read_run_checkpoint(path)
    extra = payload.get("extra_state") or {}
    if "model_config" in extra and "tokenizer" in extra:
        require_keys(extra, {"model_config": dict, "tokenizer": dict}, "extra_state", ckpt)
        require_keys(extra["tokenizer"], {"vocab": list, "lowercase": bool, "max_input_chars_per_word": int},
                     "extra_state['tokenizer']", ckpt)
        bert_config = _model_config(extra["model_config"], ckpt)
        state = extra["tokenizer"]
        tokenizer = WordPieceTokenizer(state["vocab"], state["lowercase"], state["max_input_chars_per_word"])
    else:
        cfg_file, tok_file = ckpt.parent / "model_config.json", ckpt.parent / "tokenizer.json"
        if not (cfg_file.is_file() and tok_file.is_file()):
            raise ValueError(f"path: {str(path)!r} holds no model config and tokenizer (neither in the "
                             f"checkpoint nor as model_config.json and tokenizer.json beside it)")
        bert_config = _model_config(read_json_object(cfg_file, "model config"), cfg_file)
        tokenizer = WordPieceTokenizer.load(tok_file)
    model = BertForMaskedLM(bert_config)
    check_state_dict(model, payload["model"], ckpt)  # refuse a checkpoint of another shape before loading
    model.load_state_dict(payload["model"])
    return model.eval(), tokenizer


def _model_config(values: dict, where: Path) -> BertConfig:
    try:
        return BertConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model config {where}: not a valid BertConfig ({e})") from e


def encode_with_masks(tokenizer: WordPieceTokenizer, text: str) -> list[int]:
    """[CLS] text [SEP] with each literal "[MASK]" as the mask id (the pre-tokenizer would split it at '[')."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    pieces = text.split(MASK)
    if len(pieces) < 2:
        raise ValueError(f"text: expected at least one {MASK} to fill, got {text!r}")
    ids = [tokenizer.cls_id]
    for i, piece in enumerate(pieces):
        if i:
            ids.append(tokenizer.mask_id)
        ids += tokenizer.encode(piece).ids[1:-1]  # drop the segment's own [CLS] ... [SEP]
    return ids + [tokenizer.sep_id]


def starts_a_word(text: str) -> list[bool]:
    """Per literal [MASK], left to right: does it start a word? It does unless it is glued to a letter or digit
    before it ("play[MASK]"); a word start cannot be a `##` continuation piece."""
    pieces = text.split(MASK)
    return [not (before and before[-1].isalnum()) for before in pieces[:-1]]


def _allowed(tokenizer: WordPieceTokenizer, word_start: bool) -> torch.Tensor:
    """(V,) bool: the tokens a mask may be filled with: never a special token; at a word start, no `##` piece."""
    allowed = torch.ones(tokenizer.vocab_size, dtype=torch.bool)
    allowed[tokenizer.special_ids] = False
    if word_start:
        allowed &= torch.tensor([not t.startswith("##") for t in tokenizer.vocab])
    return allowed


@torch.no_grad()
def fill_mask(model: BertForMaskedLM, tokenizer: WordPieceTokenizer, text: str,
              top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in `text`, left to right, its `top_k` (token, probability) candidates, most likely first.

    All masks are predicted at once from one forward pass (each conditions on the others being masked), with
    probabilities from the softmax over the whole vocabulary, so each list sums to at most 1. Special tokens
    are never proposed, nor `##` continuation pieces where the mask stands as a word of its own
    (starts_a_word); the probabilities of what is proposed are not renormalized.
    """
    if not isinstance(top_k, int) or not 1 <= top_k <= tokenizer.vocab_size:
        raise ValueError(f"top_k: expected an int in [1, {tokenizer.vocab_size}], got {top_k!r}")
    ids = encode_with_masks(tokenizer, text)
    max_len = model.config.max_position
    if len(ids) > max_len:
        raise ValueError(f"text: expected at most {max_len} tokens with [CLS]/[SEP] (the model's max_position), "
                         f"got {len(ids)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)  # (1, N)
    logits = model(input_ids).logits[0]  # (1, N, V) -> (N, V)
    model.train(was_training)
    positions = (input_ids[0] == tokenizer.mask_id).nonzero().flatten()
    probs = torch.softmax(logits[positions].float(), dim=-1)  # (masks, V)
    allowed = torch.stack([_allowed(tokenizer, start) for start in starts_a_word(text)]).to(probs.device)
    top = probs.masked_fill(~allowed, -1.0).topk(top_k, dim=-1)  # -1: below every real probability
    return [[(tokenizer.vocab[i], float(p)) for p, i in zip(ps.tolist(), ix.tolist()) if p >= 0]
            for ps, ix in zip(top.values, top.indices)]


def format_predictions(text: str, predictions: list[list[tuple[str, float]]]) -> str:
    """The text with the best guesses filled in, then a ranked table per mask."""
    best = iter(f"[{cands[0][0]}]" for cands in predictions)
    filled = "".join(piece if i == 0 else next(best) + piece for i, piece in enumerate(text.split(MASK)))
    lines = [f"input:  {text}", f"filled: {filled}"]
    for m, cands in enumerate(predictions, start=1):
        lines.append(f"{MASK} {m} of {len(predictions)}:")
        lines += [f"  {rank}. {token:<14} {prob:7.2%}" for rank, (token, prob) in enumerate(cands, start=1)]
    return "\n".join(lines)


def fill_mask_main(argv: Sequence[str], prog: str = "minitx fill-mask") -> int:
    """`minitx fill-mask CHECKPOINT_OR_RUN_DIR "text with [MASK]" [--top-k 5]`."""
    parser = argparse.ArgumentParser(prog=prog, description="top-k predictions for each [MASK] in a text")
    parser.add_argument("checkpoint", help="a pretraining run directory, or its checkpoint.pt")
    parser.add_argument("text", help='text with one or more literal [MASK], e.g. "the dogs [MASK] happy ."')
    parser.add_argument("--top-k", type=int, default=5, help="candidates to show per mask (default: 5)")
    args = parser.parse_args(list(argv))
    if MASK not in args.text:
        parser.error(f"text: expected at least one {MASK} to fill, got {args.text!r}")
    model, tokenizer = load_pretrained(args.checkpoint)
    print(format_predictions(args.text, fill_mask(model, tokenizer, args.text, args.top_k)))
    return 0
