"""minitx.interpret against TransformerLens (a reference no one here wrote): the same random GPT-2 weights give
the same cached residual streams, attention patterns, q, z and feed-forward activations (interp.1), and the
same logit lens (interp.7), with TransformerLens's weight processing turned off (TransformerLens 4: the TransformerBridge over\nthe Hugging Face GPT-2 that minitx.interop writes, without compatibility mode).

TransformerLens is heavy (it pulls in datasets, pandas, pyarrow, wandb) and is not part of `[dev]`: install the
`interpret-reference` extra (`pip install -e ".[interpret-reference]"` or `pip install transformer-lens`) to run it.
"""

import pytest
import torch
from einops import rearrange

transformer_lens = pytest.importorskip(
    "transformer_lens", reason="TransformerLens is not installed (the `interpret-reference` extra: "
    "pip install transformer-lens); this differential test needs it")

from minitx.interpret.cache import run_with_cache  # noqa: E402
from minitx.interpret.lens import logit_lens  # noqa: E402
from minitx.models.gpt import GPT, GPTConfig  # noqa: E402

C, H, L, V, N_CTX = 32, 4, 3, 50, 16


def minitx_gpt() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, max_position=N_CTX, d_model=C, n_layers=L, n_heads=H,
                          activation="gelu_tanh")).eval()
    with torch.no_grad():  # GPT-2's init leaves biases and norm shifts at zero: make every parameter count
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def as_transformer_lens(model: GPT, tmp_path):
    """The same weights in TransformerLens 4's TransformerBridge over a Hugging Face GPT-2 (minitx.interop), raw
    weights: no LayerNorm folding, no centring (weight processing off; compatibility mode not enabled). A tiny
    word-level tokenizer saved to disk stands in for GPT-2's, so nothing is fetched from the Hub."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from minitx.interop.gpt2 import to_hf_gpt2
    words = Tokenizer(WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", bos_token="t1", eos_token="t1",
                            pad_token="t0").save_pretrained(tmp_path)
    return TransformerBridge.boot_transformers("gpt2", hf_model=to_hf_gpt2(model), device="cpu",
                                               tokenizer=AutoTokenizer.from_pretrained(tmp_path))


def test_same_weights_same_cache_as_transformer_lens(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = minitx_gpt()
    tl = as_transformer_lens(model, tmp_path)
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, cache = run_with_cache(model, ids)
        tl_logits, tl_cache = tl.run_with_cache(ids)
    tol = dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out.logits, tl_logits, **tol)
    for i in range(L):
        for point in ("resid_pre", "resid_mid", "resid_post"):
            torch.testing.assert_close(cache[f"blocks.{i}.{point}"], tl_cache[f"blocks.{i}.hook_{point}"], **tol)
        torch.testing.assert_close(cache[f"blocks.{i}.attention.pattern"], tl_cache[f"blocks.{i}.attn.hook_pattern"],
                                   **tol)
        for point in ("q", "k", "v", "z"):  # minitx (B, H, N, D), TransformerLens (B, N, H, D)
            torch.testing.assert_close(cache[f"blocks.{i}.attention.{point}"],
                                       tl_cache[f"blocks.{i}.attn.hook_{point}"].transpose(1, 2), **tol)
        torch.testing.assert_close(cache[f"blocks.{i}.feed_forward.hidden"], tl_cache[f"blocks.{i}.mlp.hook_post"],
                                   **tol)
        torch.testing.assert_close(cache[f"blocks.{i}.attn_out"], tl_cache[f"blocks.{i}.hook_attn_out"], **tol)
        torch.testing.assert_close(cache[f"blocks.{i}.ffn_out"], tl_cache[f"blocks.{i}.hook_mlp_out"], **tol)
    # the logit lens: TransformerLens's accumulated residual, final norm applied, unembedded (interp.7)
    streams, _ = tl_cache.accumulated_resid(apply_ln=True, return_labels=True)  # (L + 1, B, N, C)
    torch.testing.assert_close(logit_lens(model, cache), tl.unembed(streams), **tol)
