"""The documented top-level API: `import minitx` gives the names a user reaches for first, lazily."""

import inspect
import subprocess
import sys

import minitx

API = ["AdamW", "BertConfig", "BertForMaskedLM", "BertForSequenceClassification", "BertModel", "Block",
       "ByteBPETokenizer", "CharTokenizer", "FeedForward", "GPT", "GPTConfig", "KVCache", "LayerNorm", "Llama", "LlamaConfig", "LoRALinear",
       "MultiHeadAttention", "TrainConfig", "Transformer", "TransformerConfig", "WordPieceTokenizer", "apply_lora", "available_backends",
       "generate", "hook_names", "merge_lora", "register_backend", "train", "using_hooks"]


def test_the_top_level_names_are_pinned():
    assert minitx.__all__ == API + ["functional", "interop"]
    assert set(API) <= set(dir(minitx))


def test_each_name_is_the_object_its_defining_module_holds():
    for name in API:
        obj = getattr(minitx, name)
        module = sys.modules[obj.__module__]
        assert getattr(module, name) is obj and inspect.getmodule(obj) is module, name
    assert minitx.functional.gelu is sys.modules["minitx.functional._gelu"].gelu


def test_interop_offers_the_four_converters():
    from minitx.interop.bert import from_hf_bert, to_hf_bert
    from minitx.interop.gpt2 import from_hf_gpt2, to_hf_gpt2
    assert (minitx.interop.from_hf_bert, minitx.interop.to_hf_bert) == (from_hf_bert, to_hf_bert)
    assert (minitx.interop.from_hf_gpt2, minitx.interop.to_hf_gpt2) == (from_hf_gpt2, to_hf_gpt2)
    from minitx.interop.marian import from_hf_marian, to_hf_marian
    assert (minitx.interop.from_hf_marian, minitx.interop.to_hf_marian) == (from_hf_marian, to_hf_marian)
    from minitx.interop.llama import from_hf_llama, to_hf_llama
    assert (minitx.interop.from_hf_llama, minitx.interop.to_hf_llama) == (from_hf_llama, to_hf_llama)


def test_an_unknown_name_is_an_attribute_error():
    for module in (minitx, minitx.interop):
        try:
            module.no_such_name
        except AttributeError as err:
            assert "no_such_name" in str(err)
        else:
            raise AssertionError("expected AttributeError")


def test_import_is_light_and_kernels_never_load_on_a_cpu():
    """`import minitx` loads neither torch nor Triton; building and running both models does not load the
    kernels either (they are reached through the attention registry only, when "flash" is asked for)."""
    code = """
import sys, minitx
assert "torch" not in sys.modules, "import minitx imported torch"
import torch
bert = minitx.BertForMaskedLM(minitx.BertConfig(vocab_size=30, d_model=16, n_heads=2, d_ff=32, n_layers=1))
gpt = minitx.GPT(minitx.GPTConfig(vocab_size=30, d_model=16, n_heads=2, n_layers=1))
ids = torch.randint(0, 30, (1, 5))
bert(ids), minitx.generate(gpt, ids, 3, temperature=0)
bad = [m for m in sys.modules if m.startswith(("minitx.kernels", "triton"))]
assert not bad, bad
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
