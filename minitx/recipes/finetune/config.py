"""`FinetuneConfig`: every knob of `minitx finetune`, flat, on top of the shared `TrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from minitx.config import option
from minitx.training.config import TrainConfig

METHODS = ("full", "lora", "adapter", "bitfit")
# Peak learning rates per method, chosen by benchmarks/peft_experiment.py (docs/finetuning.md): methods that
# train a few fresh parameters (LoRA's B starts at zero, adapters' `up` too) want a larger step than full
# fine-tuning, which moves pretrained weights that a large step would wreck.
DEFAULT_LR = {"full": 1e-3, "lora": 5e-3, "adapter": 3e-3, "bitfit": 1e-2}


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tune a sequence classifier; the TrainConfig fields come first (lr, max_steps, seed, ...)."""
    lr: float = option(0.0, "peak learning rate (0: the method's default, " +
                   ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    warmup_steps: int = option(20, "steps of linear warmup from 0 to lr (opt.5)")
    max_steps: int = option(400, "optimizer steps at most (early stopping may end the run sooner)")
    eval_every: int = option(25, "validate every this many steps (early stopping and best weights)")
    out_dir: str = option("runs/finetune", "run directory: weights, tokenizer, config, metrics.jsonl, summary.json")
    # The starting point
    from_checkpoint: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "pretraining run directory (or its checkpoint.pt), or a Hugging Face BERT directory "
                "(save_pretrained: config.json, weights, vocab.txt); omit to train from scratch",
        "aliases": ["--from"]})
    model_config: str = option("", "from scratch: a model_config.json (e.g. a pretraining run's, for the same "
                               "architecture); default: minitx pretrain's default architecture")
    tokenizer: str = option("", "from scratch: a tokenizer.json; default: one trained on the built-in language")
    # The method
    method: str = option("lora", "what trains besides the classifier head", choices=METHODS)
    lora_r: int = option(8, "LoRA rank r (lora.1)")
    lora_alpha: float = option(16.0, "LoRA alpha; the update B A is scaled by s = alpha / r (lora.1)")
    lora_dropout: float = option(0.0, "dropout on LoRA's input path")
    lora_targets: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"], metadata={
            "help": "Linear modules LoRA wraps (names or re:<regex>); default every projection of every block: "
                    "query/value only (the LoRA paper's choice) stayed at chance on the built-in task"})
    adapter_bottleneck: int = option(16, "adapter bottleneck width (adapter.1)")
    use_pooler: bool = option(False, "classify from BERT's pooler tanh(W h_CLS) instead of the raw [CLS] vector")
    dropout: float = option(0.1, "dropout during fine-tuning (embeddings, residual branches, attention, head)")
    # The data
    num_labels: int = option(2, "number of classes")
    label_names: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "names of the classes, in label order (built-in task: negative positive)"})
    train_file: str = option("", "CSV (header text,label) or JSONL ({\"text\", \"label\"}) training data; "
                             "default: the built-in synthetic sentiment task")
    validation_file: str = option("", "validation data, same formats (default: built-in, or held out of train_file)")
    test_file: str = option("", "test data, same formats (default: built-in; with train_file: none)")
    n_train_labels: int = option(256, "labelled training examples to use (0: every row of train_file)")
    n_validation: int = option(200, "validation examples (built-in task, or held out of train_file)")
    n_test: int = option(2000, "test examples of the built-in task")
    batch_size: int = option(16, "examples per batch")
    max_length: int = option(0, "tokens per example, [CLS] and [SEP] included (0: the model's max_position)")
    patience: int = option(8, "stop after this many validations without a better one (0: never stop early)")
    threads: int = option(1, "torch CPU threads per process (0: torch's default); one is fastest for models this small "
                          "on a shared CPU (docs/training.md: BitFit, 150 steps: 5-7 s on 1 thread, 113-117 s on 2)")
    compile: bool = option(False, "torch.compile the hand-written kernel bodies (minitx.training.compile; pays "
                                  "compile time first)")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if not self.lr:
            self.lr = DEFAULT_LR[self.method]
        super().__post_init__()
        positive = ("lora_r", "adapter_bottleneck", "batch_size", "n_validation", "n_test")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("n_train_labels", "max_length", "patience", "threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise ValueError(f"num_labels: expected an int >= 2, got {self.num_labels!r}")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ValueError(f"label_names: expected {self.num_labels} names (num_labels), "
                             f"got {len(self.label_names)}: {self.label_names}")
        for name in ("lora_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {getattr(self, name)}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha: expected a positive number, got {self.lora_alpha}")
        self.lora_targets = [self.lora_targets] if isinstance(self.lora_targets, str) else list(self.lora_targets)
        self.label_names = list(self.label_names)
        self._check_paths()

    def _check_paths(self) -> None:
        if self.from_checkpoint and not Path(self.from_checkpoint).exists():
            raise ValueError(f"from_checkpoint: expected a pretraining run directory or checkpoint.pt, "
                             f"got {self.from_checkpoint!r} (no such path)")
        for name in ("model_config", "tokenizer", "train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: expected an existing file, got {path!r} (no such file)")
        if (self.validation_file or self.test_file) and not self.train_file:
            raise ValueError("train_file: expected a training file when validation_file or test_file is given, "
                             "got none (the built-in task has its own splits)")
