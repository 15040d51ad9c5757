"""The model-level check: a learner's whole GPT, loaded with minitx's weights through the learner's name map.

`build_gpt(vocab_size, max_position, d_model, n_layers, n_heads)` returns `(model, name_map)`: a GPT-2-style
decoder (learned positions, pre-LN blocks, exact GELU, a 4C feed-forward, biases, LayerNorm eps 1e-5, the LM head
tied to the token embedding) whose `model(ids (B, N))` gives logits (B, N, V) (or an output with `.logits`),
and {your parameter name: minitx `GPT` parameter name} for every parameter (several names may map to one, e.g.
an untied `lm_head.weight` to `token.weight`). minitx's GPT gets random weights (none zero, none one), the
learner's model is loaded with the same ones, and logits and every parameter's gradient are compared by the
accuracy rule of `cases.compare` (float32 against minitx's GPT in float64). Before that, causality (dec.2) is
checked directly: changing the last token must not change any earlier position's logits.
"""

from __future__ import annotations

import torch

from minitx.conformance.cases import Adapter, Mismatch, call, case, compare, randn
from minitx.models.gpt import GPT, GPTConfig

F32 = torch.float32
HINT = ("check in order: token + position embeddings (dec.1); pre-LN blocks x + attn(LN(x)), then x + mlp(LN(x)) "
        "(block.3-block.4); 1/sqrt(D) per head; exact GELU; the final LayerNorm; logits = h @ token_embedding.T "
        "(dec.3)")


def _reference(c) -> GPT:
    config = GPTConfig(vocab_size=c.V, max_position=c.max_position, d_model=c.H * c.D, n_layers=c.layers,
                       n_heads=c.H, dropout=0.0, attention_dropout=0.0)
    model = GPT(config)
    g = c.generator()
    with torch.no_grad():
        for p in model.parameters():  # O(1) values, so a wrong bias, gain or scale shows in the logits
            p.copy_(randn(p.shape, g, scale=0.5) + (1.0 if p.dim() == 1 and p.shape[0] == config.d_model else 0.0))
    return model.eval()


def _logits(name, model, ids):
    out = call(name, model, ids)
    out = getattr(out, "logits", out)
    if not isinstance(out, torch.Tensor):
        raise Mismatch(f"the model returned {type(out).__name__}, expected logits", "dec.3",
                       "return the logits (B, N, V), or an output with .logits")
    return out


def _load(model, name_map, reference):
    ref = dict(reference.named_parameters())
    mine = dict(model.named_parameters())
    missing = sorted(set(mine) - set(name_map))
    if missing:
        raise Mismatch(f"name_map has no entry for your parameter(s) {missing[:4]}", "",
                       f"map every parameter of your model to one of minitx's: {', '.join(list(ref)[:6])}, ...")
    with torch.no_grad():
        for mine_name, ref_name in name_map.items():
            if mine_name not in mine:
                raise Mismatch(f"name_map names {mine_name!r}, which your model does not have", "", "fix the map")
            if ref_name not in ref:
                raise Mismatch(f"name_map maps {mine_name!r} to {ref_name!r}, which minitx's GPT does not have", "",
                               f"minitx's names: {', '.join(ref)}")
            if mine[mine_name].shape != ref[ref_name].shape:
                raise Mismatch(f"{mine_name} has shape {tuple(mine[mine_name].shape)}, minitx's {ref_name} "
                               f"{tuple(ref[ref_name].shape)}", "", "weights are in nn.Linear's (out, in) layout")
            mine[mine_name].copy_(ref[ref_name])
    return mine


def _gpt_run(fn, c):
    built = call("build_gpt", fn, c.V, c.max_position, c.H * c.D, c.layers, c.H)
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module)):
        raise Mismatch("build_gpt must return (model, name_map)", "", "return the module and a dict")
    model, name_map = built
    model = model.float()
    model.eval()
    reference = _reference(c)
    mine = _load(model, dict(name_map), reference)
    g = c.generator(1)
    ids = torch.randint(0, c.V, (c.B, c.N), generator=g)
    got = _logits("model(ids)", model, ids)
    if tuple(got.shape) != (c.B, c.N, c.V):
        raise Mismatch(f"logits have shape {tuple(got.shape)}, expected {(c.B, c.N, c.V)}", "dec.3", HINT)
    if c.N > 1:
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % c.V
        with torch.no_grad():  # both without a gradient: a model may run a different (fused) path there
            base, later = _logits("model(ids)", model, ids), _logits("model(ids)", model, changed)
        moved = float((later[:, :-1] - base[:, :-1]).abs().max())
        if moved > 1e-6 * max(1.0, float(got.detach().abs().max())):
            raise Mismatch(f"changing the last token changed earlier logits by up to {moved:.3g}", "dec.2",
                           "every self-attention must be causal: position i attends to keys j <= i only")
    ref64 = reference.double()
    ref32 = _reference(c)
    out64, out32 = ref64(ids).logits, ref32(ids).logits
    compare("logits", got, out64, out32, F32, "dec.1-dec.3", HINT)
    upstream = randn(out64.shape, c.generator(2))
    torch.autograd.backward(got, upstream.to(F32))
    out64.backward(upstream)
    out32.backward(upstream.to(F32))
    summed: dict[str, torch.Tensor] = {}
    for mine_name, ref_name in name_map.items():
        grad = mine[mine_name].grad
        if grad is None:
            raise Mismatch(f"no gradient reached your {mine_name}", "", "do not detach parameters")
        summed[ref_name] = summed.get(ref_name, 0) + grad
    ref64_params, ref32_params = dict(ref64.named_parameters()), dict(ref32.named_parameters())
    for ref_name, grad in summed.items():
        compare(f"gradients of {ref_name} (your {', '.join(k for k, v in name_map.items() if v == ref_name)})",
                grad, ref64_params[ref_name].grad, ref32_params[ref_name].grad, F32, "dec.1-dec.3", HINT)


def _gpt_cases(st):
    return st.builds(lambda v, layers, h, d, b, n, seed: case(V=v, layers=layers, H=h, D=d, B=b, N=n,
                                                              max_position=n + 2, seed=seed),
                     st.integers(2, 20), st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 2),
                     st.integers(1, 8), st.integers(0, 2**16))


GPT_MODEL = Adapter("gpt", "build_gpt", "build_gpt(vocab_size, max_position, d_model, n_layers, n_heads) -> "
                    "(model, name_map)", 5, (), _gpt_cases,
                    (case(V=11, layers=2, H=2, D=3, B=2, N=5, max_position=7, seed=90),), _gpt_run, max_examples=8)

__all__ = ["GPT_MODEL"]
