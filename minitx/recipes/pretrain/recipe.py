"""Masked-language-model pretraining: the recipe behind `minitx pretrain`, on top of `minitx.training.loop`.

The recipe trains (or loads) a WordPiece tokenizer, builds a BertForMaskedLM, and hands `train()` three pure
pieces: MLM batches that are a function of (seed, step, rank) only, a loss with masked accuracy (mlm.1), and an
evaluation on held-out text. On the built-in synthetic language the evaluation also probes every *determined*
position (a word its context fixes: subject-verb agreement, a closing bracket, the end of a fixed phrase) masked
alone, and reports accuracy per kind against the chance baseline of a model that ignores the cue.
Guide: docs/pretraining.md. Batches and probes: minitx.data. Evaluation: minitx.recipes.pretrain.evaluate. Metrics and equations:
docs/math/mlm.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minitx.functional import IGNORE_INDEX
from minitx.models.bert import BertForMaskedLM, labelled_logits
from minitx.plots import loss_curve, plt
from minitx.recipes.pretrain.config import PretrainConfig, model_config
from minitx.recipes.pretrain.data import build_corpus
from minitx.recipes.pretrain.evaluate import evaluate
from minitx.tokenizers.wordpiece import WordPieceTokenizer
from minitx.training import distributed as D
from minitx.training.checkpoint import CheckpointError, read_checkpoint
from minitx.training.compile import apply_compile
from minitx.training.loop import TrainResult, begin_recipe, train

__all__ = ["PretrainResult", "run_pretraining", "masked_lm_loss"]


@dataclass
class PretrainResult:
    summary: dict[str, Any]             # what summary.json holds
    model: BertForMaskedLM              # the trained model (bare, on the CPU or the run's device)
    tokenizer: WordPieceTokenizer
    train: TrainResult                  # the loop's own result (history of every record, paths)


def _tokenizer_state(tok: WordPieceTokenizer) -> dict[str, Any]:
    return {"vocab": list(tok.vocab), "lowercase": tok.lowercase,
            "max_input_chars_per_word": tok.max_input_chars_per_word}


# ----------------------------------------------------------------------------------------------- loss
def masked_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """(mlm.1) on the batch, plus the share of selected tokens predicted right and exp(loss) (perplexity)."""
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], labels=batch["labels"])
    selected = batch["labels"] != IGNORE_INDEX
    correct = labelled_logits(out, batch["labels"]).detach().argmax(-1) == batch["labels"][selected]  # (K,)
    accuracy = correct.sum() / selected.sum().clamp(min=1)
    # A batch with nothing selected (likely at a small mlm_probability and batch size) has a mean over zero
    # targets, NaN: it contributes zero loss and zero gradient instead.
    loss = out.loss if bool(selected.any()) else labelled_logits(out, batch["labels"]).sum() * 0.0
    return loss, {"masked_accuracy": accuracy, "perplexity": torch.exp(loss.detach())}


def run_pretraining(config: PretrainConfig) -> PretrainResult:
    """Train a tokenizer and a BertForMaskedLM as `config` says; write the run directory (rank 0 only)."""
    began = begin_recipe(config, PretrainConfig)
    apply_compile(config.compile)
    main = D.world_info().rank == 0
    out = Path(config.out_dir) if config.out_dir else None
    corpus = build_corpus(config)
    tokenizer = _get_tokenizer(config, corpus, out)
    bert_config = model_config(config, tokenizer)
    torch.manual_seed(config.seed)  # the initial weights: the same on every rank (DDP also broadcasts rank 0's)
    model = BertForMaskedLM(bert_config)
    if main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out / "tokenizer.json")
        (out / "model_config.json").write_text(json.dumps(bert_config.to_dict(), indent=2) + "\n")
    batch_fn = corpus.batch_fn(tokenizer)
    extra = {"model_config": bert_config.to_dict(), "tokenizer": _tokenizer_state(tokenizer)}
    result = train(model, batch_fn, masked_lm_loss, config,
                   eval_fn=lambda m: evaluate(m, corpus, tokenizer, config), extra_state=extra)
    summary = _summary(config, result, model, tokenizer, time.perf_counter() - began)
    if main:
        if out is not None:
            keys = ("loss", "masked_accuracy") + (("probe_accuracy",) if corpus.probe_sentences else ())
            plt.close(loss_curve(result.history, keys=keys, title="MLM pretraining", path=out / "loss_curve.png"))
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary))
    return PretrainResult(summary, model, tokenizer, result)


def _get_tokenizer(config: PretrainConfig, corpus: Any, out: Path | None) -> WordPieceTokenizer:
    """--tokenizer if given; on resume, the run's own tokenizer.json; else train one (deterministic, so every
    DDP rank trains the same vocabulary without talking to the others)."""
    if config.tokenizer:
        return WordPieceTokenizer.load(config.tokenizer)
    if config.resume and out is not None and (out / "checkpoint.pt").is_file():
        # The checkpoint carries the tokenizer: a damaged tokenizer.json beside it does not block the resume
        # (it is written again below). A damaged checkpoint is reported by the loop's own load.
        try:
            state = read_checkpoint(out / "checkpoint.pt")["extra_state"]["tokenizer"]
            return WordPieceTokenizer(state["vocab"], state["lowercase"], state["max_input_chars_per_word"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            pass
    if config.resume and out is not None and (out / "tokenizer.json").is_file():
        return WordPieceTokenizer.load(out / "tokenizer.json")
    return WordPieceTokenizer.train(corpus.tokenizer_texts(), config.vocab_size, config.min_frequency,
                                    config.lowercase)


def _summary(config: PretrainConfig, result: TrainResult, model: BertForMaskedLM, tokenizer: WordPieceTokenizer,
             wall_s: float) -> dict[str, Any]:
    ev = result.eval_metrics
    kinds = sorted(k[len("probe_accuracy_"):] for k in ev if k.startswith("probe_accuracy_"))
    return {
        "steps": result.step,
        "wall_time_s": round(wall_s, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": tokenizer.vocab_size,
        "world_size": D.world_info().world_size,
        "corpus": "text files" if config.text else config.corpus,
        "out_dir": config.out_dir or None,
        "train": {k: v for k, v in result.metrics.items() if k not in ("step", "split")},
        "eval": {k: v for k, v in ev.items() if k in ("loss", "perplexity", "masked_accuracy", "unigram_loss",
                                                      "unigram_accuracy", "accuracy_at_mask",
                                                      "unigram_accuracy_at_mask")},
        "determined": {"accuracy": ev.get("probe_accuracy"), "chance": ev.get("chance"),
                       "per_kind": {k: {"accuracy": ev[f"probe_accuracy_{k}"], "chance": ev[f"chance_{k}"],
                                        "probes": int(ev[f"probes_{k}"])} for k in kinds}} if kinds else None,
        "config": dataclasses.asdict(config),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The final table `minitx pretrain` prints."""
    ev, tr = summary["eval"], summary["train"]
    rows = [("steps", f"{summary['steps']}"), ("wall time", f"{summary['wall_time_s']:.1f} s"),
            ("parameters", f"{summary['parameters']:,}"), ("train loss", f"{tr.get('loss', float('nan')):.4f}")]
    if ev:
        rows += [("eval loss", f"{ev['loss']:.4f}"), ("eval perplexity", f"{ev['perplexity']:.3f}"),
                 ("eval masked accuracy", f"{ev['masked_accuracy']:.2%}")]
        if "unigram_loss" in ev:  # real text: the context-free baseline beside the model
            rows += [("unigram baseline", f"loss {ev['unigram_loss']:.4f}, accuracy {ev['unigram_accuracy']:.2%}")]
        if "accuracy_at_mask" in ev:
            rows += [("accuracy at [MASK]", f"{ev['accuracy_at_mask']:.2%}  (unigram "
                                            f"{ev['unigram_accuracy_at_mask']:.2%})")]
    det = summary.get("determined")
    if det:
        for kind, v in det["per_kind"].items():
            rows.append((f"determined: {kind}", f"{v['accuracy']:.2%}  (chance {v['chance']:.2%}, "
                                                f"{v['probes']} probes)"))
        rows.append(("determined: all", f"{det['accuracy']:.2%}  (chance {det['chance']:.2%})"))
    if summary.get("out_dir"):
        rows.append(("run directory", f"{summary['out_dir']}  (checkpoint, metrics.jsonl, summary.json, "
                                      f"loss_curve.png)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["MLM pretraining summary", "-" * (width + 30)] + [f"{k:<{width}}  {v}" for k, v in rows])
