"""Using a fine-tuned classifier: load a run directory safely, predict, and `minitx classify`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import torch

from minitx.models.bert import BertConfig, BertForSequenceClassification
from minitx.peft.adapters import apply_adapters
from minitx.recipes.finetune.recipe import ADAPTER_TARGETS
from minitx.tokenizers.wordpiece import WordPieceTokenizer
from minitx.training.checkpoint import CheckpointError, check_state_dict, read_checkpoint, require_keys


TOKENIZER_KEYS = {"vocab": list, "lowercase": bool, "max_input_chars_per_word": int}


def load_finetuned(path: str | Path) -> tuple[BertForSequenceClassification, WordPieceTokenizer, dict[str, Any]]:
    """(model in eval mode, tokenizer, classifier info: num_labels, label_names, method, max_length, ...).

    The checkpoint is verified against its manifest and read with weights_only=True, so loading runs no code.
    A LoRA run's checkpoint holds the merged weights, a plain classifier; an adapter run's holds the adapters,
    so the same adapters are put in place before loading.
    """
    path = Path(path)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ValueError(f"path: expected a fine-tuning run directory holding checkpoint.pt, got {str(path)!r}")
    payload = read_checkpoint(ckpt)
    extra = payload.get("extra_state") or {}
    if "classifier" not in extra:
        raise ValueError(f"path: {str(path)!r} is not a fine-tuning run (its checkpoint has no classifier info; "
                         f"a pretraining run is used with `minitx fill-mask` or `minitx finetune --from`)")
    require_keys(extra, {"classifier": dict, "tokenizer": dict, "model_config": dict}, "extra_state", ckpt)
    info, state = extra["classifier"], extra["tokenizer"]
    require_keys(info, {"num_labels": int, "use_pooler": bool, "method": str, "adapter_bottleneck": int},
                 "extra_state['classifier']", ckpt)
    require_keys(state, TOKENIZER_KEYS, "extra_state['tokenizer']", ckpt)
    try:
        bert_config = BertConfig.from_dict(extra["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: extra_state['model_config'] is not a model config ({e})") from e
    model = BertForSequenceClassification(bert_config, info["num_labels"], info["use_pooler"])
    if info["method"] == "adapter":
        apply_adapters(model, ADAPTER_TARGETS, info["adapter_bottleneck"])
    check_state_dict(model, payload["model"], ckpt)
    model.load_state_dict(payload["model"])
    tokenizer = WordPieceTokenizer(state["vocab"], state["lowercase"], state["max_input_chars_per_word"])
    return model.eval(), tokenizer, info


@torch.no_grad()
def predict(model: BertForSequenceClassification, tokenizer: WordPieceTokenizer, texts: Sequence[str],
            max_length: int | None = None) -> torch.Tensor:
    """Class probabilities (B, num_labels), softmax of (bert.5)'s logits, computed in eval mode."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts: expected a sequence of str, got {type(texts).__name__}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = tokenizer.encode_batch(list(texts), max_length=max_length or model.config.max_position)
    logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                   batch["token_type_ids"].to(device)).logits
    model.train(was_training)
    return torch.softmax(logits.float(), dim=-1).cpu()


def classify_main(argv: Sequence[str], prog: str = "minitx classify") -> int:
    """`minitx classify RUN_DIR "text" ["text" ...]`: one line per text, label and its probability."""
    parser = argparse.ArgumentParser(prog=prog, description="classify texts with a fine-tuned run")
    parser.add_argument("run_dir", help="a `minitx finetune` run directory (or its checkpoint.pt)")
    parser.add_argument("texts", nargs="+", help="texts to classify")
    args = parser.parse_args(list(argv))
    model, tokenizer, info = load_finetuned(args.run_dir)
    probs = predict(model, tokenizer, args.texts, info.get("max_length"))
    names = info.get("label_names") or [str(i) for i in range(info["num_labels"])]
    for text, p in zip(args.texts, probs):
        label = int(p.argmax())
        print(f"{names[label]}\t{float(p[label]):.4f}\t{text}")
    return 0
