"""Hugging Face formats in and out, without importing `transformers` at run time (it is a test-only reference).

    bert.py       from_hf_bert, to_hf_bert: BertForMaskedLM <-> HF BERT, the name map both ways
    gpt2.py       from_hf_gpt2, to_hf_gpt2: GPT <-> HF GPT-2 (Conv1D weights transposed)
    llama.py      from_hf_llama, to_hf_llama: Llama <-> HF Llama; load_hf_llama, save_hf_llama (directories)
    marian.py     from_hf_marian, to_hf_marian: Transformer <-> HF MarianMT, and its directories
    hf_dirs.py    save_pretrained-style directories (config.json, safetensors, vocab) read and written
    peft_dirs.py  PEFT LoRA adapter directories read and written

The converters are reachable here too: `minitx.interop.from_hf_bert(...)`.
"""

from __future__ import annotations

import importlib

_CONVERTERS = {"from_hf_bert": "minitx.interop.bert", "to_hf_bert": "minitx.interop.bert",
               "from_hf_gpt2": "minitx.interop.gpt2", "to_hf_gpt2": "minitx.interop.gpt2",
               "from_hf_marian": "minitx.interop.marian", "to_hf_marian": "minitx.interop.marian",
               "from_hf_llama": "minitx.interop.llama", "to_hf_llama": "minitx.interop.llama"}
__all__ = sorted(_CONVERTERS)


def __getattr__(name: str):
    if name not in _CONVERTERS:
        raise AttributeError(f"module 'minitx.interop' has no attribute {name!r}")
    return getattr(importlib.import_module(_CONVERTERS[name]), name)
