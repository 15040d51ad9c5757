"""`minitx explain RUN "text"`: what a trained run does on one text, as PNG figures (minitx.interpret).

For a `pretrain` run (a masked LM; write [MASK] in the text to see what it fills) or a `train-lm` run (a GPT):
  attention.png   every layer's every head, query rows against key columns (interp.1)
  rollout.png     attention rollout through all layers (interp.2)-(interp.3)
  logit_lens.png  the top token read from the stream after each block (interp.7): for a GPT the next token,
                  for a masked LM the token at each position
and explain.json: the tokens, the figures' paths, and the model's top prediction per position. With --html also
  explain.html    a self-contained page (no network, inline script) to pick a layer and a head
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from minitx.interpret.cache import run_with_cache
from minitx.interpret.figures import attention_grid, logit_lens_figure, rollout_figure
from minitx.interpret.lens import logit_lens
from minitx.interpret.maps import attention_patterns, attention_rollout
from minitx.interpret.page import attention_page
from minitx.recipes.lm.generate import load_lm
from minitx.recipes.pretrain.fill_mask import MASK, encode_with_masks, load_pretrained
from minitx.training.checkpoint import read_run_checkpoint

__all__ = ["explain", "explain_main"]


def _run_kind(run: str | Path) -> str:
    """"lm" for a train-lm run (its tokenizer state names a type), "mlm" for a pretrain run."""
    _, payload = read_run_checkpoint(run, argument="run", kind="pretrain or train-lm run directory")
    tokenizer_state = (payload.get("extra_state") or {}).get("tokenizer")
    return "lm" if isinstance(tokenizer_state, dict) and "type" in tokenizer_state else "mlm"


def _encode(kind: str, model, tokenizer, text: str) -> tuple[torch.Tensor, list[str], Any]:
    """(ids (1, N), the token strings, decode one id)."""
    if kind == "lm":
        ids = tokenizer.encode(text)[-model.config.max_position:]  # the last block_size tokens
        return torch.tensor([ids]), [tokenizer.decode([i]) for i in ids], lambda i: tokenizer.decode([i])
    ids = encode_with_masks(tokenizer, text) if MASK in text else tokenizer.encode(text).ids
    if len(ids) > model.config.max_position:
        raise ValueError(f"text: {len(ids)} tokens exceed the model's max_position={model.config.max_position}")
    return torch.tensor([ids]), [tokenizer.vocab[i] for i in ids], lambda i: tokenizer.vocab[i]


def explain(run: str | Path, text: str, out_dir: str | Path | None = None, html: bool = False) -> dict[str, Any]:
    """Write attention.png, rollout.png, logit_lens.png and explain.json (and explain.html with `html`) for `text`
    under `out_dir` (default: RUN/explain); returns what explain.json holds."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text: expected a non-empty string, got {text!r}")
    kind = _run_kind(run)
    model, tokenizer = load_lm(run) if kind == "lm" else load_pretrained(run)
    ids, tokens, decode = _encode(kind, model, tokenizer, text)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    out = Path(out_dir) if out_dir is not None else run_dir / "explain"
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        output, cache = run_with_cache(model.eval(), ids)
        patterns = attention_patterns(cache)  # (L, 1, H, N, N)
        lens = logit_lens(model, cache)  # (L + 1, 1, N, V)
    what = "next token" if kind == "lm" else "token at each position (MLM head)"
    attention_grid(patterns[:, 0], tokens, title=f"{run_dir.name}: attention", path=out / "attention.png")
    rollout_figure(attention_rollout(patterns)[0], tokens, path=out / "rollout.png")
    logit_lens_figure(lens[:, 0], tokens, decode, title=f"logit lens: the {what} read after each block",
                      path=out / "logit_lens.png")
    figures = {name: str(out / f"{name}.png") for name in ("attention", "rollout", "logit_lens")}
    if html:
        page = attention_page(patterns[:, 0], tokens, title=f"{run_dir.name}: attention on {text[:60]!r}")
        (out / "explain.html").write_text(page, encoding="utf-8")
        figures["html"] = str(out / "explain.html")
    top = output.logits[0].argmax(-1).tolist()
    summary = {"run": str(run), "kind": "train-lm (GPT)" if kind == "lm" else "pretrain (masked LM)",
               "text": text, "tokens": tokens, "top_prediction": [decode(i) for i in top],
               "figures": figures}
    (out / "explain.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def explain_main(argv: Sequence[str], prog: str = "minitx explain") -> int:
    """`minitx explain RUN "text" [--out-dir DIR]`."""
    parser = argparse.ArgumentParser(prog=prog, description="Figures of what a trained run does on one text: "
                                     "attention per layer and head, rollout, logit lens (PNG).")
    parser.add_argument("run", help="a pretrain or train-lm run directory (or its checkpoint.pt)")
    parser.add_argument("text", help="the text to look at; for a pretrain run, [MASK] marks what to fill")
    parser.add_argument("--out-dir", default=None, help="where the figures go (default: RUN/explain)")
    parser.add_argument("--html", action="store_true", help="also write explain.html: pick a layer and a head "
                        "(self-contained, no network)")
    args = parser.parse_args(list(argv))
    summary = explain(args.run, args.text, args.out_dir, html=args.html)
    for name, path in summary["figures"].items():
        print(f"{name:<11} {path}")
    print("top prediction per position: " + " ".join(repr(t) for t in summary["top_prediction"]))
    return 0
