"""minitx.Llama and its parts: RMSNorm and SwiGLU modules against torch / the formula, a GQA model that trains and
generates the same tokens cached and uncached on math, sdpa and (under the Triton interpreter) flash, Mistral's
sliding window, the ablations, and the checks at the door. Exactness against Hugging Face: test_llama_interop.py."""

import importlib

import pytest
import torch

import minitx
from minitx.generation.generate import generate
from minitx.hooks import hook_names
from minitx.models.llama import Llama, LlamaConfig
from minitx.nn.feed_forward import SwiGLU
from minitx.nn.norms import RMSNorm


def tiny(**overrides):
    fields = dict(vocab_size=31, max_position=24, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40)
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**{**fields, **overrides}))
    with torch.no_grad():  # weights larger than the 0.02 init, so the logits differ clearly between tokens
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(6.0)
    return model.eval()


def test_top_level_names_and_parts():
    assert minitx.Llama is Llama and minitx.LlamaConfig is LlamaConfig
    model = tiny()
    block = model.blocks[0]
    assert isinstance(block.attention_norm, RMSNorm) and isinstance(block.feed_forward, SwiGLU)
    assert block.norm_first and block.attention.rotary is not None and block.attention.n_kv_heads == 2
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())  # no biases anywhere
    assert "blocks.0.feed_forward.hidden" in hook_names(model)


def test_rms_norm_module_matches_torch():
    """(rmsnorm.1) through the module == torch.nn.RMSNorm with the same gain and eps."""
    torch.manual_seed(0)
    ours, ref = RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(16))
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16) * 4
    torch.testing.assert_close(ours(x), ref(x))
    with pytest.raises(ValueError, match="x: expected last dim 16"):
        ours(torch.randn(2, 8))


def test_swiglu_module_is_the_formula_with_three_matrices():
    """(swiglu.4): down(silu(gate x) * up x), and 3 C d_ff weights, no biases."""
    torch.manual_seed(0)
    ff = SwiGLU(12, 20)
    x = torch.randn(2, 3, 12)
    want = ff.down_proj(torch.nn.functional.silu(ff.gate_proj(x)) * ff.up_proj(x))
    torch.testing.assert_close(ff(x), want)
    assert sum(p.numel() for p in ff.parameters()) == 3 * 12 * 20


def test_default_ff_width_keeps_a_4c_gelu_mlps_weights():
    """(swiglu.4): d_ff = 8C/3, rounded up to a multiple of 8; the GELU ablation keeps 4C."""
    assert LlamaConfig(d_model=96).ff_width == 256 and LlamaConfig(d_model=128).ff_width == 344
    assert LlamaConfig(d_model=128, feed_forward="gelu").ff_width == 512


def test_causal_and_tied_or_untied_head():
    model = tiny()
    ids = torch.randint(0, 31, (2, 10))
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 31
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(a, model(ids).hidden @ model.token.weight.T)  # tied (dec.3)
    untied = tiny(tie_embeddings=False)
    assert untied.head is not None and untied.head.weight.data_ptr() != untied.token.weight.data_ptr()


def _flash_available(monkeypatch) -> bool:
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    kernels = importlib.import_module("minitx.kernels.flash_kernels")
    return torch.cuda.is_available() or all(isinstance(f, InterpretedFunction) for f in (tl.zeros, kernels._fwd_kernel))


@pytest.mark.parametrize("backend", ["math", "sdpa", "flash"])
def test_gqa_model_trains_and_generates_the_same_tokens_cached_and_uncached(backend, monkeypatch):
    """A GQA Llama (4 query heads, 2 key/value heads) on each backend: logits with right padding equal the math
    backend's; greedy generation with the KV cache (dec.6)-(dec.9) equals generation without it and the math
    backend's; the gradients of one training step equal the math backend's, and (math, sdpa) a few AdamW steps
    lower the loss. flash runs under the Triton interpreter on a CPU (one layer there, to stay quick)."""
    if backend == "flash" and not _flash_available(monkeypatch):
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    model = tiny(n_layers=1) if backend == "flash" else tiny()
    ids = torch.randint(0, 31, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch = torch.randint(0, 31, (2, 9), generator=torch.Generator().manual_seed(2))
    steps = 2 if backend == "flash" else 6

    def grads():
        model.zero_grad()
        model(batch[:, :-1], targets=batch[:, 1:]).loss.backward()
        return [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        want = generate(model, ids[:, :4], steps, temperature=0)
    ref_grads = grads()
    model.set_attention_backend(backend)
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
    assert (got - ref)[mask.bool()].abs().max() < 1e-4
    cached = generate(model, ids[:, :4], steps, temperature=0)
    assert torch.equal(cached, generate(model, ids[:, :4], steps, temperature=0, use_cache=False))
    assert torch.equal(cached, want)
    cache = model.new_cache()
    with torch.no_grad():
        model(ids[:, :4], cache=cache)
    assert cache[0].keys.shape[1] == 2  # the cache holds n_kv_heads heads
    for a, b in zip(grads(), ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    if backend == "flash":
        return
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_flash_takes_gqa_and_the_window_natively(monkeypatch):
    """The kernel reads the shared key/value heads and applies the window itself: no repeated k/v, no mask."""
    if not _flash_available(monkeypatch):
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    import minitx.attention.masks as masks
    model = tiny(sliding_window=3, n_layers=1)
    ids = torch.randint(0, 31, (1, 6))
    with torch.no_grad():
        ref = model(ids).logits
    model.set_attention_backend("flash")

    def no_repeat(t, n_heads):
        raise AssertionError("flash was handed repeated key/value heads")

    def no_mask(*args, **kwargs):
        raise AssertionError("flash was handed the window as a mask")
    monkeypatch.setattr(masks, "repeat_kv", no_repeat)
    monkeypatch.setattr(masks, "band_mask", no_mask)
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() < 1e-4


def test_sliding_window_sees_exactly_the_last_w_tokens():
    """Mistral's window W = 3 in one layer: the logits at position i change with tokens i-2..i and not with
    token i-3 or earlier; cached generation (bottom-right window over the cache) equals uncached."""
    model = tiny(sliding_window=3, n_layers=1)
    assert model.config.window == (2, 0)
    ids = torch.randint(0, 31, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(ids).logits[0, 8]
        for pos, expect_change in ((5, False), (2, False), (6, True), (8, True)):
            other = ids.clone()
            other[0, pos] = (other[0, pos] + 5) % 31
            moved = (model(other).logits[0, 8] - base).abs().max() > 1e-4
            assert bool(moved) == expect_change, pos
    prompt = ids[:, :4]
    assert torch.equal(generate(model, prompt, 10, temperature=0),
                       generate(model, prompt, 10, temperature=0, use_cache=False))
    full = tiny(n_layers=1)
    with torch.no_grad():
        assert (full(ids).logits[0, 8] - base).abs().max() > 1e-3  # the window changed something


@pytest.mark.parametrize("ablation", [dict(norm="layer"), dict(feed_forward="gelu"), dict(position="learned"),
                                      dict(n_kv_heads=0)])
def test_each_ablation_swaps_exactly_one_part(ablation):
    """The Shakespeare comparison's ablations: one GPT-2 part back in the Llama, the rest unchanged."""
    model, base = tiny(**ablation), tiny()
    names, base_names = set(dict(model.named_modules())), set(dict(base.named_modules()))
    ids = torch.randint(0, 31, (2, 8))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    outside_ffn = {n for n in names if ".feed_forward." not in n}
    if "position" in ablation:
        assert model.position is not None and model.blocks[0].attention.rotary is None
    elif "n_kv_heads" in ablation:
        assert model.blocks[0].attention.n_kv_heads == 4 and names == base_names
    else:
        assert outside_ffn == {n for n in base_names if ".feed_forward." not in n}
        part = model.blocks[0].attention_norm if "norm" in ablation else model.blocks[0].feed_forward
        assert type(part).__name__ in ("LayerNorm", "FeedForward")
    assert torch.equal(generate(model, ids[:, :3], 5, temperature=0),
                       generate(model, ids[:, :3], 5, temperature=0, use_cache=False))


def test_bad_configs_and_inputs_name_the_argument():
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="head dim"):
        LlamaConfig(d_model=12, n_heads=4)
    with pytest.raises(ValueError, match="rope_theta"):
        LlamaConfig(rope_theta=0.5)
    with pytest.raises(ValueError, match="norm"):
        LlamaConfig(norm="batch")
    model = tiny()
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[1, 31]]))
    with pytest.raises(ValueError, match="max_position"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(TypeError, match="cache"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=object())


def test_config_round_trips_through_a_dict():
    config = LlamaConfig(n_kv_heads=1, rope_theta=5e5, tie_embeddings=False, sliding_window=8)
    assert LlamaConfig.from_dict(config.to_dict()) == config
