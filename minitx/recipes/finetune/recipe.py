"""The classification recipe behind `minitx finetune`: pretrained encoder + new head, one PEFT method, the shared
training loop with validation, early stopping that keeps the best weights, and a run directory.

The head is (bert.5): logits = W Drop(pool(h)) + b. It is new, so it trains under every method; what else trains
is the method's choice (docs/math/lora.md): everything (full), low-rank updates of the attention projections
(lora.1), bottleneck adapters after each sublayer (adapter.1) or the bias terms alone (bitfit.1).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minitx.data.synthetic import SyntheticLanguage
from minitx.models.bert import BertConfig, BertForSequenceClassification
from minitx.peft.adapters import apply_adapters
from minitx.peft.bitfit import apply_bitfit
from minitx.peft.lora import apply_lora, lora_state_dict, merge_lora
from minitx.peft.targets import trainable_parameters_report
from minitx.recipes.finetune.config import FinetuneConfig
from minitx.recipes.finetune.data import BUILTIN_LABEL_NAMES, chunks, encode_split, load_splits, make_batch_fn
from minitx.tokenizers.wordpiece import WordPieceTokenizer
from minitx.training.checkpoint import save_checkpoint
from minitx.training.compile import apply_compile
from minitx.training.loop import TrainResult, begin_recipe, train

ADAPTER_TARGETS = ("out_proj", "fc_out")     # after attention and after the feed-forward, as Houlsby et al.
ADAPTER_NORMS = ("attention_norm", "ffn_norm")  # Houlsby et al. also train each block's layer norms


@dataclass
class FinetuneResult:
    summary: dict[str, Any]                 # what summary.json holds
    model: BertForSequenceClassification    # the best weights, PEFT wrappers still in place (LoRA unmerged)
    tokenizer: WordPieceTokenizer
    train: TrainResult
    paths: dict[str, Path]


class BestWeights:
    """The best validation score seen, a copy of the trainable weights at that moment, and the patience count.

    Only trainable tensors are copied: frozen ones cannot change, so under LoRA the copy is a few thousand numbers.
    A score is (accuracy, -loss): accuracy first, the loss to break the ties that few examples make common.
    """

    def __init__(self, model: nn.Module, patience: int):
        self.model, self.patience = model, patience
        self.best: tuple[float, float] | None = None
        self.best_step, self.since, self.weights = 0, 0, {}

    def update(self, step: int, accuracy: float, loss: float) -> bool:
        """Record one validation; True when `patience` validations in a row brought nothing better (stop)."""
        score = (accuracy, -loss)
        if self.best is None or score > self.best:
            self.best, self.best_step, self.since = score, step, 0
            self.weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            return False
        self.since += 1
        return bool(self.patience) and self.since >= self.patience

    @torch.no_grad()
    def restore(self) -> None:
        params = dict(self.model.named_parameters())
        for name, value in self.weights.items():
            params[name].copy_(value)


def builtin_tokenizer() -> WordPieceTokenizer:
    """The tokenizer `minitx pretrain` trains by default, for from-scratch runs without --tokenizer."""
    from minitx.recipes.pretrain.config import PretrainConfig
    defaults = PretrainConfig(out_dir="")
    return WordPieceTokenizer.train(SyntheticLanguage(defaults.seed).texts(defaults.train_sentences, "train"),
                                    defaults.vocab_size)


def starting_point(config: FinetuneConfig) -> tuple[BertForSequenceClassification, WordPieceTokenizer]:
    """The classifier before fine-tuning: a pretrained encoder (--from) or random weights of a stated shape."""
    from minitx.recipes.pretrain.config import model_config, PretrainConfig
    from minitx.recipes.pretrain.fill_mask import load_pretrained
    overrides = {"dropout": config.dropout, "attention_dropout": config.dropout}
    from minitx.interop.hf_dirs import is_hf_checkpoint_dir
    if config.from_checkpoint and is_hf_checkpoint_dir(config.from_checkpoint):
        return from_hf_directory(config, overrides)
    if config.from_checkpoint:
        mlm, tokenizer = load_pretrained(config.from_checkpoint)
        mlm.config = dataclasses.replace(mlm.config, **overrides)  # our own fresh copy: the classifier's dropout
        model = BertForSequenceClassification.from_pretrained_mlm(mlm, config.num_labels, config.use_pooler,
                                                                  seed=config.seed)
        return model, tokenizer
    tokenizer = WordPieceTokenizer.load(config.tokenizer) if config.tokenizer else builtin_tokenizer()
    if config.model_config:
        bert_config = BertConfig.from_dict(json.loads(Path(config.model_config).read_text()))
        if bert_config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"model_config: vocab_size {bert_config.vocab_size} does not match the tokenizer's "
                             f"{tokenizer.vocab_size}; pass the tokenizer.json of the same run")
    else:
        bert_config = model_config(PretrainConfig(out_dir=""), tokenizer)
    torch.manual_seed(config.seed)
    model = BertForSequenceClassification(dataclasses.replace(bert_config, **overrides), config.num_labels,
                                          config.use_pooler)
    return model, tokenizer


def from_hf_directory(config: FinetuneConfig, overrides: dict[str, Any]) -> tuple[BertForSequenceClassification,
                                                                                  WordPieceTokenizer]:
    """The classifier on a Hugging Face BERT directory's encoder (minitx.interop.hf_dirs); its pooler too, with
    use_pooler, when the checkpoint has one (BertForPreTraining, BertModel), else a fresh seeded pooler."""
    from minitx.interop.hf_dirs import load_hf_encoder
    bert_config, encoder, pooler, tokenizer = load_hf_encoder(config.from_checkpoint)
    torch.manual_seed(config.seed)  # the new head, as from_pretrained_mlm seeds it
    model = BertForSequenceClassification(dataclasses.replace(bert_config, **overrides), config.num_labels,
                                          config.use_pooler)
    model.bert.load_state_dict({k[len("bert."):]: v for k, v in encoder.items()})
    if config.use_pooler and pooler:
        model.pooler.load_state_dict({k[len("pooler."):]: v for k, v in pooler.items()})
    return model, tokenizer


def head_modules(config: FinetuneConfig) -> tuple[str, ...]:
    return ("classifier", "pooler") if config.use_pooler else ("classifier",)


def apply_method(model: nn.Module, config: FinetuneConfig) -> list[str]:
    """Freeze what the method freezes, wrap what it wraps; return the names of the modules it changed."""
    head = head_modules(config)
    torch.manual_seed(config.seed + 1)  # LoRA's A and the adapters' down projections draw random weights
    if config.method == "lora":
        return apply_lora(model, config.lora_targets, config.lora_r, config.lora_alpha, config.lora_dropout,
                          trainable_modules=head)
    if config.method == "adapter":
        return apply_adapters(model, ADAPTER_TARGETS, config.adapter_bottleneck,
                              trainable_modules=head + ADAPTER_NORMS)
    if config.method == "bitfit":
        return apply_bitfit(model, trainable_modules=head)
    return []  # full: every parameter trains


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of (bert.5)'s logits, and the batch accuracy."""
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], labels=batch["labels"])
    accuracy = (out.logits.detach().argmax(-1) == batch["labels"]).float().mean()
    return out.loss, {"accuracy": accuracy}


@torch.no_grad()
def evaluate(model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 256) -> dict[str, float]:
    """Accuracy and mean cross-entropy over every example of a split, in eval mode (no dropout)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    correct = nll = 0.0
    for batch in chunks(encoded, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits.float()
        nll += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        correct += float((logits.argmax(-1) == batch["labels"]).sum())
    model.train(was_training)
    n = len(encoded["labels"])
    return {"accuracy": correct / n, "loss": nll / n}


def run_finetuning(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune as `config` says, write the run directory (docs/finetuning.md) and print a summary."""
    began = begin_recipe(config, FinetuneConfig)
    apply_compile(config.compile)
    model, tokenizer = starting_point(config)
    max_length = config.max_length or model.config.max_position
    if max_length > model.config.max_position:
        raise ValueError(f"max_length: expected at most the model's max_position={model.config.max_position}, "
                         f"got {max_length}")
    splits = load_splits(config)
    encoded = {name: encode_split(split, tokenizer, max_length) for name, split in splits.items()}
    changed = apply_method(model, config)
    trainable, total, share = trainable_parameters_report(model)
    trained_s = time.perf_counter()
    result, best, steps_run = train_with_early_stopping(model, encoded, config)
    trained_s = time.perf_counter() - trained_s
    test = evaluate(model, encoded["test"]) if "test" in encoded else {}
    summary = {
        "method": config.method, "from": config.from_checkpoint or "scratch",
        "examples": {name: len(split) for name, split in splits.items()},
        "test_accuracy": test.get("accuracy"), "test_loss": test.get("loss"),
        "best_validation_accuracy": best.best[0] if best.best else None, "best_step": best.best_step,
        "steps_run": steps_run, "stopped_early": result.stopped_early,
        "trainable_parameters": trainable, "total_parameters": total, "trainable_share": share,
        "modules_changed": len(changed), "train_time_s": round(trained_s, 2),
        "wall_time_s": round(time.perf_counter() - began, 2), "lr": config.lr, "out_dir": config.out_dir or None,
        "config": dataclasses.asdict(config),
    }
    paths = save_run(config, model, tokenizer, summary) if config.out_dir else {}
    print(format_summary(summary))
    return FinetuneResult(summary, model, tokenizer, result, paths)


def train_with_early_stopping(model: nn.Module, encoded: dict[str, dict[str, torch.Tensor]],
                              config: FinetuneConfig) -> tuple[TrainResult, BestWeights, int]:
    """The shared loop, validating every eval_every steps; the eval record asks the loop to stop after
    `patience` validations without a better one, and the best validation weights are put back into `model`.
    Returns (the loop's result, the tracker, the last step run)."""
    best, where = BestWeights(model, config.patience), {"step": 0}
    batch_fn = make_batch_fn(encoded["train"], config.batch_size, config.seed, config.grad_accum_steps)

    def tracked_batch_fn(step: int, *rest: int) -> dict[str, torch.Tensor]:
        where["step"] = step  # the eval hook learns the step from here: train() calls it with the model only
        return batch_fn(step, *rest)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        record = evaluate(m, encoded["validation"])
        stop = best.update(where["step"], record["accuracy"], record["loss"])
        if stop:
            print(f"early stopping: step {where['step']}: no better validation for {best.since} evaluations; "
                  f"keeping step {best.best_step}")
        return {**record, "stop": stop}

    result = train(model, tracked_batch_fn, classification_loss, config, eval_fn)
    best.restore()
    return result, best, result.step


def label_names(config: FinetuneConfig) -> list[str]:
    if config.label_names:
        return list(config.label_names)
    return list(BUILTIN_LABEL_NAMES) if not config.train_file else [str(i) for i in range(config.num_labels)]


def save_run(config: FinetuneConfig, model: BertForSequenceClassification, tokenizer: WordPieceTokenizer,
             summary: dict[str, Any]) -> dict[str, Path]:
    """checkpoint.pt: the whole classifier for inference (LoRA merged, lora.6); for LoRA also the adapter-only
    state (lora_A, lora_B and the head) as lora_adapter.safetensors; tokenizer, configs, summary."""
    from safetensors.torch import save_file
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"out_dir": out, "checkpoint": out / "checkpoint.pt", "tokenizer": out / "tokenizer.json",
             "model_config": out / "model_config.json", "summary": out / "summary.json",
             "metrics": out / "metrics.jsonl"}
    inference = model
    if config.method == "lora":
        paths["adapter"] = out / "lora_adapter.safetensors"
        save_file({k: v.contiguous() for k, v in lora_state_dict(model).items()}, str(paths["adapter"]))
        inference = merge_lora(copy.deepcopy(model))
    classifier = {"num_labels": config.num_labels, "use_pooler": config.use_pooler, "method": config.method,
                  "adapter_bottleneck": config.adapter_bottleneck, "label_names": label_names(config),
                  "max_length": config.max_length or model.config.max_position}
    extra = {"model_config": model.config.to_dict(), "classifier": classifier,
             "tokenizer": {"vocab": list(tokenizer.vocab), "lowercase": tokenizer.lowercase,
                           "max_input_chars_per_word": tokenizer.max_input_chars_per_word}}
    save_checkpoint(paths["checkpoint"], model=inference, step=summary["best_step"],
                    config=dataclasses.asdict(config), extra_state=extra)
    tokenizer.save(paths["tokenizer"])
    paths["model_config"].write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths


def format_summary(summary: dict[str, Any]) -> str:
    """The table `minitx finetune` prints at the end."""
    acc = summary["test_accuracy"]
    rows = [("method", summary["method"]), ("from", summary["from"]),
            ("examples", ", ".join(f"{k} {v}" for k, v in summary["examples"].items())),
            ("trainable parameters", f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
                                     f"({summary['trainable_share']:.2%})"),
            ("best validation", f"{summary['best_validation_accuracy']:.2%} at step {summary['best_step']}"
                                + (" (stopped early)" if summary["stopped_early"] else "")),
            ("test accuracy", "n/a (no test split)" if acc is None else f"{acc:.2%}"),
            ("wall time", f"{summary['wall_time_s']:.1f} s")]
    if summary.get("out_dir"):
        rows.append(("run directory", f"{summary['out_dir']}  (checkpoint, metrics.jsonl, summary.json)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["fine-tuning summary", "-" * (width + 40)] + [f"{k:<{width}}  {v}" for k, v in rows])
