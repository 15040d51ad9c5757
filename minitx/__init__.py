"""minitx: a transformer built from scratch to be read, run and trusted.

The names a user reaches for first are here, loaded on first use (`import minitx` imports neither torch nor
Triton until a name is asked for); every other name lives in the module that defines it:

    functional      pure math with hand-written backward passes (softmax, layer_norm, gelu, attention, ...)
    positional      absolute (sinusoidal, learned), rope, alibi
    attention       checks, masks, backends (the registry), front_door (`attention`), varlen, cache, multi_head
    nn              norms, feed_forward, block (the one Block)
    models          inputs, bert, gpt, llama, transformer (the encoder-decoder)
    generation      sampling, beam, encoder_decoder, generate (the loop only; the KV cache lives in the model)
    tokenizers      wordpiece (+ trainer, pretokenize), bpe, char, files
    data            synthetic, text_files, text, mlm, corpora
    training        config, guards, distributed, optim, checkpoint, compile, loop
    peft            targets, lora, adapters, bitfit
    interop         Hugging Face BERT / GPT-2 / Llama / MarianMT / checkpoint and PEFT directories, without `transformers`
    conformance     `minitx check`: a learner's own functions against the reference math
    recipes         pretrain, lm, finetune, export: what the `minitx` commands run
    kernels, bench  the Triton kernel (reached through the attention registry only) and its benchmarks

Imports point down that list only (checks, config, hooks, seeding and plots sit below everything; cli on top);
tests/test_house.py holds the package to it. docs/architecture.md has the map.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it: the documented top-level API (tests/test_api.py pins it)
_API = {
    "BertConfig": "minitx.models.bert",
    "BertModel": "minitx.models.bert",
    "BertForMaskedLM": "minitx.models.bert",
    "BertForSequenceClassification": "minitx.models.bert",
    "GPTConfig": "minitx.models.gpt",
    "GPT": "minitx.models.gpt",
    "TransformerConfig": "minitx.models.transformer",
    "Transformer": "minitx.models.transformer",
    "LlamaConfig": "minitx.models.llama",
    "Llama": "minitx.models.llama",
    "generate": "minitx.generation.generate",
    "KVCache": "minitx.attention.cache",
    "MultiHeadAttention": "minitx.attention.multi_head",
    "register_backend": "minitx.attention.backends",
    "available_backends": "minitx.attention.backends",
    "Block": "minitx.nn.block",
    "LayerNorm": "minitx.nn.norms",
    "FeedForward": "minitx.nn.feed_forward",
    "WordPieceTokenizer": "minitx.tokenizers.wordpiece",
    "ByteBPETokenizer": "minitx.tokenizers.bpe",
    "CharTokenizer": "minitx.tokenizers.char",
    "AdamW": "minitx.training.optim",
    "TrainConfig": "minitx.training.config",
    "train": "minitx.training.loop",
    "apply_lora": "minitx.peft.lora",
    "merge_lora": "minitx.peft.lora",
    "LoRALinear": "minitx.peft.lora",
    "using_hooks": "minitx.hooks",
    "hook_names": "minitx.hooks",
}
_SUBPACKAGES = ("functional", "interop")
# (not `attention`: that name is the subpackage; the front door is minitx.attention.front_door.attention)

__all__ = sorted(_API) + list(_SUBPACKAGES)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"minitx.{name}")
    else:
        raise AttributeError(f"module 'minitx' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
