"""Causal language modelling: the recipe behind `minitx train-lm`, on top of `minitx.training.loop`.

As nanoGPT's shakespeare_char: a character vocabulary (or a byte-level BPE), the text as one long stream of
ids split 90% / 10% by position (the first 90% trains, the last 10% validates), random windows of
`block_size` tokens as batches with targets shifted by one (dec.4), and an evaluation that averages the loss
over `eval_batches` fixed windows of each split, as nanoGPT's `estimate_loss`, plus the loss over the whole
validation split at the end. Batches are a pure function of (seed, step, micro-step, rank), so resume is
exact and every DDP rank draws its own windows. Results: docs/results/lm_shakespeare.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from minitx.attention.backends import available_backends
from minitx.config import option
from minitx.data.corpora import CORPORA, corpus_file
from minitx.models.gpt import GPT, GPTConfig, next_token_loss
from minitx.models.llama import Llama, LlamaConfig
from minitx.seeding import seed_for
from minitx.tokenizers.char import CharTokenizer
from minitx.training import distributed as D
from minitx.training.config import TrainConfig
from minitx.training.loop import TrainResult, begin_recipe, train

__all__ = ["LMConfig", "LMResult", "run_lm", "shakespeare_text", "split_ids", "lm_batch", "compact_ids",
           "SHAKESPEARE_SHA256"]

SHAKESPEARE_SHA256 = CORPORA["shakespeare"][1]
MAX_BPE_VOCAB = 65_536  # refused up front beyond this (GPT-2's is 50,257): the trainer learns one merge at a time


def shakespeare_text() -> str:
    """Tiny Shakespeare (1,115,394 characters), the copy shipped in minitx.data.corpora; the checksum proves it is the
    text nanoGPT trains on."""
    path = corpus_file("shakespeare")
    data = gzip.decompress(path.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"corpus: {path} is not tiny Shakespeare (sha256 {digest[:12]}..., expected "
                         f"{SHAKESPEARE_SHA256[:12]}...)")
    return data.decode("utf-8")


@dataclass
class LMConfig(TrainConfig):
    """Every knob of `minitx train-lm`, flat; the TrainConfig fields first. Defaults: the default run, nanoGPT's
    model (4 layers, 4 heads, width 128) with twice the context (128), 16 windows a step, 1,600 steps at lr 2e-3:
    under 5 minutes on 2 CPU cores. nanoGPT's exact configuration: benchmarks/lm/nanomodel_cfg.sh."""
    lr: float = option(2e-3, "peak learning rate η, reached at the end of warmup (opt.5); 2x nanoGPT's, which a 4-layer model takes")
    weight_decay: float = option(0.1, "decoupled weight decay λ on matrices and embeddings (opt.2, opt.4)")
    betas: tuple[float, float] = option((0.9, 0.99), "AdamW β1 β2 (nanoGPT's β2 = 0.99 for small batches)")
    warmup_steps: int = option(100, "steps of linear warmup from 0 to lr (opt.5)")
    max_steps: int = option(1600, "optimizer steps in the whole run")
    schedule: str = option("cosine", "decay after warmup (opt.6, opt.7)", choices=("linear", "cosine", "constant"))
    min_lr_ratio: float = option(0.1, "final lr as a fraction of lr (nanoGPT: min_lr = lr / 10)")
    log_every: int = option(50, "write a train record to metrics.jsonl every this many steps")
    eval_every: int = option(250, "evaluate every this many steps (0: only at the end)")
    out_dir: str = option("runs/lm", "run directory: checkpoint, tokenizer, metrics, figures, sample, summary")
    # Corpus and tokenizer
    corpus: str = option("shakespeare", "built-in tiny Shakespeare, or 'text' for --text files",
                     choices=("shakespeare", "text"))
    text: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "UTF-8 text files, concatenated into one stream (with --corpus text)"})
    tokenizer: str = option("char", "char (one id per character) or bpe (byte-level, trained on the train split)",
                        choices=("char", "bpe"))
    vocab_size: int = option(512, "BPE vocabulary size (256 bytes + merges); ignored for char")
    val_fraction: float = option(0.1, "the last this share of the stream validates (nanoGPT: 0.1)")
    # Model
    arch: str = option("gpt", "gpt (GPT-2: LayerNorm, GELU MLP, learned positions) or llama (RMSNorm, SwiGLU, "
                       "RoPE, grouped-query attention, no biases; minitx.Llama)", choices=("gpt", "llama"))
    n_kv_heads: int = option(0, "key/value heads (0: n_heads; fewer: grouped-query attention, 1: multi-query)")
    d_model: int = option(128, "model width C")
    n_layers: int = option(4, "decoder blocks")
    n_heads: int = option(4, "attention heads H")
    d_ff: int = option(0, "feed-forward width (0: 4 * d_model; llama: 8 * d_model / 3, a multiple of 8)")
    block_size: int = option(128, "context length in tokens (learned positions)")
    dropout: float = option(0.0, "dropout on embeddings, residual branches and attention weights")
    activation: str = option("gelu", "gelu (exact) or gelu_tanh (GPT-2's); gpt only", choices=("gelu", "gelu_tanh"))
    bias: bool = option(True, "biases in linear layers and LayerNorms (nanoGPT's default: --no-bias); gpt only")
    attention_backend: str = option("sdpa", "attention backend (any registered one); sdpa is the fastest correct one "
                                "on a CPU", choices=available_backends)
    # Batches, evaluation, sample
    batch_size: int = option(16, "windows per micro-batch, per rank")
    eval_batches: int = option(20, "windows-batches per split in each evaluation (nanoGPT's eval_iters)")
    sample_tokens: int = option(500, "tokens of text generated at the end into sample.txt (0: none)")
    threads: int = option(1, "torch CPU threads per process (0: torch's default); one, as every command: a "
                             "second thread buys little at this size and costs ~10x when the cores are shared")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_model", "n_layers", "n_heads", "block_size", "batch_size"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) \
                    or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        for name in ("eval_batches", "sample_tokens", "threads", "d_ff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {getattr(self, name)!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a share in (0, 1), got {self.val_fraction}")
        if self.tokenizer == "bpe" and not 256 < self.vocab_size <= MAX_BPE_VOCAB:
            raise ValueError(f"vocab_size: a byte-level BPE needs more than 256 ids and at most {MAX_BPE_VOCAB:,} "
                             f"(GPT-2 has 50,257; each merge is learned one at a time), got --vocab-size "
                             f"{self.vocab_size:,}")
        self.text = [self.text] if isinstance(self.text, str) else list(self.text)
        if self.corpus == "text" and not self.text:
            raise ValueError("text: --corpus text needs at least one file")
        if self.text and self.corpus != "text":  # silently training on Shakespeare instead would be worse
            raise ValueError(f"text: files given with --corpus {self.corpus}, which ignores them; pass --corpus "
                             f"text to train on {', '.join(map(str, self.text[:3]))}")
        for path in self.text:
            _check_text_file(path)


def _check_text_file(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"text: expected UTF-8 text files, got {str(path)!r} (a directory)")
    if not p.exists():
        raise ValueError(f"text: expected existing UTF-8 text files, got {str(path)!r} (no such file)")
    if not p.is_file():
        raise ValueError(f"text: expected regular UTF-8 text files, got {str(path)!r} (a device or pipe)")


@dataclass
class LMResult:
    summary: dict[str, Any]
    model: GPT | Llama
    tokenizer: Any
    train: TrainResult


def split_ids(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's split of the stream: the first int(n * 0.9) ids train, the rest validate."""
    cut = int(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:]


def lm_batch(data: torch.Tensor, batch_size: int, block_size: int, seed: int) -> dict[str, torch.Tensor]:
    """`batch_size` random windows of `data`: input_ids (B, T) and targets (B, T) one token later (dec.4)."""
    if len(data) <= block_size:
        raise ValueError(f"data: expected more than block_size={block_size} tokens, got {len(data)}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=g)
    idx = starts[:, None] + torch.arange(block_size + 1)  # (B, T + 1)
    window = data[idx].long()  # the stream may be stored compact (compact_ids); ids are int64 from here on
    return {"input_ids": window[:, :-1], "targets": window[:, 1:]}


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """(dec.4) on the batch, and its perplexity exp(loss)."""
    out = model(batch["input_ids"], targets=batch["targets"])
    return out.loss, {"perplexity": torch.exp(out.loss.detach())}


@torch.no_grad()
def split_loss(model: GPT, data: torch.Tensor, block_size: int, batch_size: int = 16, progress: bool = False) -> float:
    """Mean (dec.4) over consecutive non-overlapping windows covering all of `data` (every target once).
    `progress`: a bar on a terminal, else a plain line at every tenth of the windows (it takes minutes)."""
    n = (len(data) - 1) // block_size
    x = data[:n * block_size].long().view(n, block_size)  # (windows, T)
    y = data[1:n * block_size + 1].long().view(n, block_size)
    total = 0.0
    bar = tqdm(total=n, desc="whole-split eval", unit="window", disable=not (progress and sys.stderr.isatty()))
    plain, next_line = progress and bar.disable, 0.1
    for i in range(0, n, batch_size):
        logits = model(x[i:i + batch_size]).logits
        total += float(next_token_loss(logits, y[i:i + batch_size])) * len(x[i:i + batch_size])
        bar.update(len(x[i:i + batch_size]))
        done = min(i + batch_size, n) / max(n, 1)
        if plain and (done >= next_line or i + batch_size >= n):
            print(f"whole-split eval: {min(i + batch_size, n):,}/{n:,} windows, loss so far "
                  f"{total / min(i + batch_size, n):.4f}", flush=True)
            next_line = math.floor(done * 10 + 1) / 10
    bar.close()
    return total / max(n, 1)


def compact_ids(ids: list[int] | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The token stream in the smallest integer dtype that holds `vocab_size` ids (uint8 for a character
    vocabulary: 1.1 MB for tiny Shakespeare instead of 8.9 MB as int64; nanoGPT keeps it as uint16)."""
    dtype = torch.uint8 if vocab_size <= 256 else torch.int16 if vocab_size <= 2 ** 15 else torch.int32
    return torch.as_tensor(ids, dtype=torch.long).to(dtype)


def plot_in_child(history: list[dict], path: Path) -> None:
    """loss_curve.png drawn by a child Python process, so matplotlib (~30 MiB, held to the end once
    imported) never adds to this process's memory; the child is far below the training process's peak."""
    code = ("import json, sys; from minitx.plots import loss_curve; "
            "loss_curve(json.load(sys.stdin), keys=('loss',), title='causal LM', path=sys.argv[1])")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code, str(path)], input=json.dumps(history), text=True,
                          env=env, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"loss curve: the plotting process failed: {done.stderr.strip()[-500:]}")


def _build_tokenizer(config: LMConfig, text: str, cut: int, out: Path | None):
    """char: every character of the whole text (as nanoGPT), so validation has no unknown character; bpe:
    merges learned on the train split only (run directory's own tokenizer on resume)."""
    if config.tokenizer == "char":
        return CharTokenizer.train(text)
    from minitx.tokenizers.bpe import ByteBPETokenizer
    if config.resume and out is not None and (out / "tokenizer.json").is_file():
        return ByteBPETokenizer.load(out / "tokenizer.json")
    return ByteBPETokenizer.train([text[:cut]], config.vocab_size)


def _load_text(config: LMConfig) -> str:
    if config.corpus == "shakespeare":
        return shakespeare_text()
    parts = []
    for path in config.text:
        try:
            parts.append(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"text: expected UTF-8 text files, got {str(path)!r}, which is not UTF-8 (byte "
                             f"{err.start}: {err.reason}; a binary file?)") from None
    text = "".join(parts)
    if not text:
        raise ValueError(f"text: the files {', '.join(map(str, config.text[:3]))} hold no text")
    return text


def run_lm(config: LMConfig) -> LMResult:
    """Tokenize the corpus, train a GPT or a Llama (`arch`) as `config` says, and write the run directory (rank 0
    only)."""
    began = begin_recipe(config, LMConfig)
    main, out = D.world_info().rank == 0, (Path(config.out_dir) if config.out_dir else None)
    text = _load_text(config)
    cut = int(len(text) * (1.0 - config.val_fraction))  # for char: the same cut as split_ids on the ids
    tokenizer = _build_tokenizer(config, text, cut, out)
    ids = compact_ids(tokenizer.encode(text), tokenizer.vocab_size)
    del text  # only the ids are needed from here on
    train_ids, val_ids = split_ids(ids, config.val_fraction)
    model_cfg = model_config(config, tokenizer.vocab_size)
    torch.manual_seed(config.seed)
    model = GPT(model_cfg) if config.arch == "gpt" else Llama(model_cfg)
    if main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out / "tokenizer.json")
        (out / "model_config.json").write_text(json.dumps(model_cfg.to_dict(), indent=2) + "\n")

    def batch_fn(step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        return lm_batch(train_ids, config.batch_size, config.block_size, seed_for(config.seed, step, micro, rank))

    eval_fn = _estimate_loss(config, train_ids, val_ids)
    extra = {"model_config": model_cfg.to_dict(), "tokenizer": tokenizer.state(), "arch": config.arch}
    result = train(model, batch_fn, causal_lm_loss, config, eval_fn=eval_fn if config.eval_batches else None,
                   extra_state=extra)
    train_s = time.perf_counter() - began
    summary = _summary(config, result, model, tokenizer, train_s, len(train_ids), len(val_ids))
    if main:
        model.eval()
        summary["val_loss_full_split"] = round(split_loss(model, val_ids, config.block_size,
                                                          progress=config.progress), 4)
        if out is not None:
            plot_in_child(result.history, out / "loss_curve.png")
            if config.sample_tokens:
                (out / "sample.txt").write_text(_sample(model, tokenizer, config) + "\n", encoding="utf-8")
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary, out))
    return LMResult(summary, model, tokenizer, result)


def format_summary(summary: dict[str, Any], out: Path | None = None) -> str:
    """The final table `minitx train-lm` prints (as `minitx pretrain` does); summary.json holds it all."""
    ev, tr = summary["eval"], summary["train"]
    rows = [("steps", f"{summary['steps']}"), ("wall time", f"{summary['wall_time_s']:.1f} s (training)"),
            ("parameters", f"{summary['parameters']:,}"), ("vocabulary", f"{summary['vocab_size']:,} tokens"),
            ("train loss", f"{tr.get('loss', float('nan')):.4f} (last step)")]
    if ev:
        rows += [("eval loss (val)", f"{ev['loss']:.4f}  (train {ev['train_loss']:.4f}; "
                                     f"{summary['config']['eval_batches']} batches per split)")]
    rows.append(("val loss, whole split", f"{summary['val_loss_full_split']:.4f}"))
    if out is not None:
        rows.append(("run directory", f"{out}  (checkpoint, metrics.jsonl, summary.json, loss_curve.png"
                                      f"{', sample.txt' if summary['config']['sample_tokens'] else ''})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["causal LM summary", "-" * (width + 30)] + [f"{k:<{width}}  {v}" for k, v in rows])


def model_config(config: LMConfig, vocab_size: int) -> GPTConfig | LlamaConfig:
    """The model config `--arch` asks for, with the run's sizes; gpt-only fields (activation, bias) stay out of
    a Llama, which has no biases and a SwiGLU feed-forward."""
    shared = dict(vocab_size=vocab_size, max_position=config.block_size, d_model=config.d_model,
                  n_layers=config.n_layers, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads, d_ff=config.d_ff,
                  dropout=config.dropout, attention_dropout=config.dropout, attention_backend=config.attention_backend)
    if config.arch == "llama":
        return LlamaConfig(**shared)
    return GPTConfig(**shared, activation=config.activation, bias=config.bias)


def _estimate_loss(config: LMConfig, train_ids: torch.Tensor, val_ids: torch.Tensor):
    """nanoGPT's estimate_loss as an eval_fn: mean loss over `eval_batches` windows-batches of each split,
    fixed once (so successive evaluations differ only by the model)."""
    eval_sets = {name: [lm_batch(data, config.batch_size, config.block_size, seed_for(config.seed, -1, i, k))
                        for i in range(config.eval_batches)]
                 for k, (name, data) in enumerate((("train", train_ids), ("val", val_ids)))}

    def eval_fn(m: GPT) -> dict[str, float]:
        losses = {name: sum(float(m(b["input_ids"], targets=b["targets"]).loss) for b in batches)
                  / max(len(batches), 1) for name, batches in eval_sets.items()}
        return {"loss": losses["val"], "perplexity": math.exp(losses["val"]), "train_loss": losses["train"]}
    return eval_fn


def _sample(model: GPT, tokenizer: Any, config: LMConfig) -> str:
    from minitx.generation.generate import generate
    start = torch.tensor([tokenizer.encode("\n")], dtype=torch.long)
    ids = generate(model.cpu(), start, config.sample_tokens, temperature=0.8, top_k=None, seed=config.seed)
    return tokenizer.decode(ids[0, 1:])


def _summary(config, result, model, tokenizer, wall_s, n_train, n_val) -> dict[str, Any]:
    return {
        "steps": result.step, "wall_time_s": round(wall_s, 1),
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": tokenizer.vocab_size,
        "train_tokens": n_train, "val_tokens": n_val, "world_size": D.world_info().world_size,
        "train": {k: v for k, v in result.metrics.items() if k not in ("step", "split")},
        "eval": {k: v for k, v in result.eval_metrics.items() if k not in ("step", "split")},
        "config": dataclasses.asdict(config),
    }
