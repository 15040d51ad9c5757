"""minitx.peft: LoRA (against PEFT, autograd and gradcheck), adapters, BitFit. Labels refer to docs/math/lora.md."""

import copy
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minitx.peft.adapters import AdapterLinear, apply_adapters
from minitx.peft.bitfit import apply_bitfit
from minitx.peft.lora import LoRAFunction, LoRALinear, apply_lora, load_lora_state_dict, lora_state_dict, merge_lora
from minitx.peft.targets import parameter_table, trainable_parameters_report

C = 8
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"]


class ToyAttention(nn.Module):
    """One-head attention with the projection names minitx's MultiHeadAttention uses."""

    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(x.shape[-1]), dim=-1)
        return self.out_proj(w @ v)


class ToyFFN(nn.Module):
    def __init__(self, d, d_ff):
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x):
        return self.fc_out(torch.nn.functional.gelu(self.fc_in(x)))


class ToyModel(nn.Module):
    def __init__(self, d=C, d_ff=16, n_layers=2, n_labels=3):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"attention": ToyAttention(d), "feed_forward": ToyFFN(d, d_ff),
                                                   "norm": nn.LayerNorm(d)}) for _ in range(n_layers))
        self.classifier = nn.Linear(d, n_labels)

    def forward(self, x):
        for layer in self.layers:
            x = layer["norm"](x + layer["attention"](x))
            x = x + layer["feed_forward"](x)
        return self.classifier(x.mean(dim=1))


def toy(seed=0):
    torch.manual_seed(seed)
    return ToyModel()


def randomize_lora(model, seed=1):
    """Give every B a nonzero value so the LoRA path actually contributes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
    return model


def lora_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


# --------------------------------------------------------------------------------------------------- vs PEFT
@pytest.mark.parametrize("r,alpha,use_rslora", [(2, 4.0, False), (4, 3.0, True), (1, 16.0, False)])
def test_matches_peft_outputs_and_merged_weights(r, alpha, use_rslora):
    """(lora.1), (lora.5), (lora.6) against Hugging Face PEFT with the same A and B copied into both."""
    peft = pytest.importorskip("peft")
    base = toy()
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=ALL_TARGETS, use_rslora=use_rslora, lora_dropout=0.0))
    ours = copy.deepcopy(base)
    names = apply_lora(ours, ALL_TARGETS, r=r, alpha=alpha, use_rslora=use_rslora)
    randomize_lora(ours)
    assert len(names) == 12
    ref_modules = dict(ref.base_model.model.named_modules())
    with torch.no_grad():
        for name, m in lora_layers(ours).items():
            theirs = ref_modules[name]
            assert theirs.scaling["default"] == pytest.approx(m.scaling)
            theirs.lora_A["default"].weight.copy_(m.lora_A)
            theirs.lora_B["default"].weight.copy_(m.lora_B)
    x = torch.randn(3, 5, C)
    ours.eval(), ref.eval()
    assert not torch.allclose(ours(x), base(x), atol=1e-3)  # the update is not trivially zero
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    merged_ref = ref.merge_and_unload()
    merged_ours = merge_lora(ours)
    assert not lora_layers(merged_ours)
    ref_state = merged_ref.state_dict()
    for key, value in merged_ours.state_dict().items():
        torch.testing.assert_close(value, ref_state[key], rtol=1e-6, atol=1e-6, msg=key)


def test_init_as_peft():
    """A is kaiming-uniform(a=sqrt 5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B is zero."""
    layer = LoRALinear(nn.Linear(400, 7), r=64, alpha=8)
    bound = 1 / math.sqrt(400)
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.95 * bound  # 25,600 uniform draws reach the edge
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(layer.lora_B) == 0


# -------------------------------------------------------------------------------------------- hand backward
def formula(x, w, b, a, bb, s, mask):
    """(lora.1) written plainly for autograd."""
    x_d = x if mask is None else x * mask
    y = x @ w.T + s * (x_d @ a.T) @ bb.T
    return y if b is None else y + b


@st.composite
def lora_case(draw):
    lead = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    d_in, d_out, r = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    s = draw(st.sampled_from([0.25, 1.0, 2.0, 16.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    mask = None
    if draw(st.booleans()):
        p = draw(st.sampled_from([0.1, 0.5]))
        mask = (torch.rand(*lead, d_in, generator=g, dtype=torch.float64) >= p).double() / (1 - p)
    bias = t(d_out) if draw(st.booleans()) else None
    return t(*lead, d_in), t(d_out, d_in), bias, t(r, d_in), t(d_out, r), s, mask


@given(lora_case())
@settings(max_examples=20)
def test_hand_backward_equals_autograd(case):
    """(lora.2) dA, (lora.3) dB, (lora.4) dX (with the dropout mask reused) == autograd through the formula."""
    x, w, b, a, bb, s, mask = case
    leaves = [t.clone().requires_grad_(True) for t in (x, w, a, bb)]
    x1, w1, a1, b1 = leaves
    leaves2 = [t.clone().requires_grad_(True) for t in (x, w, a, bb)]
    x2, w2, a2, b2 = leaves2
    y1 = LoRAFunction.apply(x1, w1, b, a1, b1, s, mask)
    y2 = formula(x2, w2, b, a2, b2, s, mask)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    torch.testing.assert_close(torch.autograd.grad(y1, leaves, g), torch.autograd.grad(y2, leaves2, g))


@given(lora_case())
@settings(max_examples=10)
def test_hand_backward_gradcheck(case):
    """(lora.2)-(lora.4) against finite differences in float64, bias included."""
    x, w, b, a, bb, s, mask = case
    b = b.requires_grad_(True) if b is not None else None
    inputs = (x.requires_grad_(True), w.requires_grad_(True), b, a.requires_grad_(True), bb.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda *t: LoRAFunction.apply(*t, s, mask), inputs)


def test_dropout_mask_is_reused_in_backward():
    """With p > 0 in training mode, the mask drawn in forward also masks the LoRA part of dX (lora.4)."""
    layer = randomize_lora(LoRALinear(nn.Linear(6, 5).double(), r=3, alpha=6, dropout=0.5))
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)  # redraw the same inverted-dropout mask
    mask = torch.empty_like(x).bernoulli_(0.5) / 0.5
    assert 0 < torch.count_nonzero(mask) < mask.numel()
    x2 = x.detach().clone().requires_grad_(True)
    a2, b2 = (t.detach().clone().requires_grad_(True) for t in (layer.lora_A, layer.lora_B))
    y2 = formula(x2, layer.base.weight, layer.base.bias, a2, b2, layer.scaling, mask)
    torch.testing.assert_close(y, y2)
    y.sum().backward()
    y2.sum().backward()
    for mine, ref in ((x.grad, x2.grad), (layer.lora_A.grad, a2.grad), (layer.lora_B.grad, b2.grad)):
        torch.testing.assert_close(mine, ref)


def test_first_step_gradient_of_A_is_zero_and_of_B_is_not():
    """B = 0 => dA = s (G B)^T X = 0 exactly (lora.2), while dB = s G^T X A^T != 0 (lora.3)."""
    layer = LoRALinear(nn.Linear(6, 4), r=2, alpha=4)
    x, target = torch.randn(10, 6), torch.randn(10, 4)
    nn.functional.mse_loss(layer(x), target).backward()
    assert torch.equal(layer.lora_A.grad, torch.zeros_like(layer.lora_A))
    assert layer.lora_B.grad.abs().min() > 0
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


# ------------------------------------------------------------------------------------------------- merging
def test_merged_equals_unmerged_and_unmerge_restores():
    """(lora.6): merged W' x + b == W x + b + s B A x (dropout inactive in eval); unmerge gives W back."""
    layer = randomize_lora(LoRALinear(nn.Linear(7, 5), r=3, alpha=5, dropout=0.3)).eval()
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(2, 4, 7)
    y = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, w0 + layer.scaling * layer.lora_B @ layer.lora_A)
    torch.testing.assert_close(layer(x), y)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.base.weight, layer.base.bias))
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)
    layer.train()  # in training mode, dropout makes the unmerged path differ
    assert not torch.allclose(layer(x), y)


@pytest.mark.parametrize("poison", ["nan", "overflow"])
def test_non_finite_merge_is_refused(poison):
    """A NaN in B, or an fp16 weight that would overflow, is refused and leaves W untouched."""
    dtype = torch.float32 if poison == "nan" else torch.float16
    layer = LoRALinear(nn.Linear(4, 3).to(dtype), r=2, alpha=2)
    with torch.no_grad():
        if poison == "nan":
            layer.lora_B[1, 0] = float("nan")
        else:
            layer.base.weight.fill_(60000.0)
            layer.lora_B.fill_(1000.0)
            layer.lora_A.fill_(10.0)
    w0 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="not finite"):
        layer.merge()
    assert torch.equal(layer.base.weight, w0) and not layer.merged


# ----------------------------------------------------------------------------------------- apply / freeze
def test_only_lora_and_listed_modules_train():
    model = toy()
    before = copy.deepcopy(model.state_dict())
    apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, trainable_modules=("classifier",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({f"layers.{i}.attention.{p}.{w}" for i in range(2) for p in ("q_proj", "v_proj")
                          for w in ("lora_A", "lora_B")} | {"classifier.weight", "classifier.bias"})
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(6, 5, C), torch.randint(0, 3, (6,))
    for _ in range(2):  # two steps: A moves only once B is nonzero
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
            key = name.replace(".base.", ".")
            assert torch.equal(param, before[key]), name
    q = model.layers[0]["attention"].q_proj
    assert q.lora_A.abs().sum() > 0 and not torch.equal(model.classifier.weight, before["classifier.weight"])


def test_fresh_lora_and_fresh_adapters_compute_the_original_function():
    """B = 0 (lora.1) and U = 0, e = 0 (adapter.1) leave the function bit-for-bit unchanged."""
    x = torch.randn(3, 5, C)
    for wrap in (lambda m: apply_lora(m, ALL_TARGETS, r=4, alpha=8),
                 lambda m: apply_adapters(m, bottleneck=3)):
        model = toy()
        y0 = model(x)
        wrap(model)
        assert torch.equal(model(x), y0)


def test_pattern_matching_rules_and_errors():
    model = toy()
    with pytest.raises(ValueError, match=r"'qq_proj'.*layers\.0\.attention\.q_proj"):
        apply_lora(model, ["q_proj", "qq_proj"], r=2, alpha=2)
    assert not lora_layers(model)  # nothing half-applied
    with pytest.raises(ValueError, match="'proj'"):  # a suffix must be a whole name component, as in PEFT
        apply_lora(toy(), "proj", r=2, alpha=2)
    names = apply_lora(toy(), r"re:layers\.1\..*_proj", r=2, alpha=2)
    assert names == [f"layers.1.attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    assert apply_lora(toy(), re.compile(r".*fc_(in|out)"), r=2, alpha=2) == [
        f"layers.{i}.feed_forward.{p}" for i in range(2) for p in ("fc_in", "fc_out")]
    model = toy()
    with pytest.raises(ValueError, match="trainable_modules: pattern 'head'"):
        apply_lora(model, "q_proj", r=2, alpha=2, trainable_modules=("head",))
    assert not lora_layers(model)  # refused before anything was wrapped
    apply_lora(model, "q_proj", r=2, alpha=2)
    with pytest.raises(ValueError, match="'q_proj'"):  # already wrapped: no plain Linear left there
        apply_lora(model, "q_proj", r=2, alpha=2)


@pytest.mark.parametrize("kwargs,err,word", [
    (dict(r=0, alpha=1), ValueError, "r"), (dict(r=2.0, alpha=1), ValueError, "r"),
    (dict(r=2, alpha=0), ValueError, "alpha"), (dict(r=2, alpha=1, dropout=1.0), ValueError, "dropout"),
])
def test_lora_linear_validates(kwargs, err, word):
    with pytest.raises(err, match=f"^{word}:"):
        LoRALinear(nn.Linear(3, 3), **kwargs)


def test_base_must_be_linear():
    with pytest.raises(TypeError, match="base: expected an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(3, 3, 1), r=1, alpha=1)
    with pytest.raises(TypeError, match="base"):
        AdapterLinear(nn.LayerNorm(3), bottleneck=2)


# ------------------------------------------------------------------------------------------- save / load
def test_lora_state_round_trip_into_a_fresh_model():
    model = toy()
    pristine = copy.deepcopy(model)
    apply_lora(model, ALL_TARGETS, r=2, alpha=4, trainable_modules=("classifier",))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(6, 5, C), torch.randint(0, 3, (6,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state = lora_state_dict(model)
    assert len(state) == 12 * 2 + 2 and not any(".base." in k for k in state)
    fresh = copy.deepcopy(pristine)
    apply_lora(fresh, ALL_TARGETS, r=2, alpha=4, trainable_modules=("classifier",))
    assert not torch.allclose(fresh(x), model(x))
    load_lora_state_dict(fresh, state)
    assert torch.equal(fresh(x), model(x))


def test_load_lora_state_is_strict():
    model = toy()
    apply_lora(model, ["q_proj"], r=2, alpha=4)
    state = lora_state_dict(model)
    key = "layers.0.attention.q_proj.lora_A"
    with pytest.raises(ValueError, match=f"missing.*{re.escape(key)}"):
        load_lora_state_dict(model, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match="unexpected.*classifier.weight"):
        load_lora_state_dict(model, {**state, "classifier.weight": torch.zeros(3, C)})
    with pytest.raises(ValueError, match=re.escape(key) + r".*\(3, 8\).*\(2, 8\)"):
        load_lora_state_dict(model, {**state, key: torch.zeros(3, C)})


# ----------------------------------------------------------------------------------- adapters, BitFit, counts
def test_adapters_train_only_adapters_and_count():
    model = toy()
    names = apply_adapters(model, bottleneck=3)
    assert names == [f"layers.{i}.{p}" for i in range(2) for p in ("attention.out_proj", "feed_forward.fc_out")]
    trainable, total, share = trainable_parameters_report(model)
    assert trainable == 4 * (2 * 3 * C + 3 + C)  # 2 m d + m + d per adapter, (adapter.1)
    assert total == sum(p.numel() for p in toy().parameters()) + trainable and share == trainable / total
    x = torch.randn(2, 5, C)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (".down." in name or ".up." in name), name


def test_trained_adapter_is_the_documented_bottleneck_on_the_base_output():
    """(adapter.1): h + U GELU(D h + c) + e with h = base(x), against torch's own erf GELU and linear."""
    torch.manual_seed(0)
    adapter = AdapterLinear(nn.Linear(C, C), bottleneck=3)
    with torch.no_grad():  # a trained (non-zero) up projection, so the bottleneck path is really checked
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    x = torch.randn(2, 5, C)
    y = torch.nn.functional.linear(x, adapter.base.weight, adapter.base.bias)
    h = torch.nn.functional.gelu(torch.nn.functional.linear(y, adapter.down.weight, adapter.down.bias))
    expected = y + torch.nn.functional.linear(h, adapter.up.weight, adapter.up.bias)
    torch.testing.assert_close(adapter(x), expected)
    assert not torch.allclose(adapter(x), y, atol=1e-3)


def test_bitfit_leaves_exactly_the_biases_trainable():
    """(bitfit.1): every parameter named bias (LayerNorm's too) plus the listed head."""
    model = toy()
    names = apply_bitfit(model, trainable_modules=("classifier",))
    expected = {n for n, _ in model.named_parameters() if n.endswith(".bias")} | {"classifier.weight"}
    assert set(names) == expected == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "layers.0.norm.bias" in expected and "layers.0.norm.weight" not in expected


def test_lora_parameter_count_and_table():
    """(lora.7): r (d_in + d_out) trainable parameters per wrapped layer."""
    model = nn.Sequential(nn.Linear(12, 20))
    apply_lora(model, "0", r=3, alpha=3)
    assert trainable_parameters_report(model) == (3 * 32, 12 * 20 + 20 + 3 * 32, 96 / 356)
    table = parameter_table({"full": nn.Linear(12, 20), "LoRA r=3": model})
    assert "LoRA r=3" in table and "96" in table and "100.000%" in table and "26.966%" in table


# ---------------------------------------------------------------------------------- minitx's own modules
def test_on_minitx_encoder_block():
    """LoRA on a real minitx Block: fresh = original, trained and merged = unmerged."""
    blocks = pytest.importorskip("minitx.nn.block")
    torch.manual_seed(0)
    block = blocks.standard_block(C, 2, 16, dropout=0.0).eval()
    x = torch.randn(2, 5, C)
    y0 = block(x)
    names = apply_lora(block, ["q_proj", "v_proj", "fc_in"], r=2, alpha=4)
    assert names == ["attention.q_proj", "attention.v_proj", "feed_forward.fc_in"]
    assert torch.equal(block(x), y0)
    randomize_lora(block)
    y1 = block(x)
    assert not torch.allclose(y1, y0, atol=1e-4)
    torch.testing.assert_close(merge_lora(block)(x), y1, rtol=1e-5, atol=1e-5)
    assert type(block.attention.q_proj) is nn.Linear


def test_on_minitx_bert_classifier():
    """The fine-tuning set-up: LoRA on q/v of every block, classifier trainable; fresh = original, then a
    round trip of the adapter-only state into a fresh copy reproduces the trained model's logits."""
    model_mod = pytest.importorskip("minitx.models.bert")
    torch.manual_seed(0)
    config = model_mod.BertConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_position=16)
    model = model_mod.BertForSequenceClassification(config, num_labels=3).eval()
    pristine = copy.deepcopy(model)
    ids = torch.randint(1, 50, (2, 7))
    logits0 = model(ids).logits
    names = apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, trainable_modules=("classifier",))
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in names)
    assert torch.equal(model(ids).logits, logits0)
    trainable, _, _ = trainable_parameters_report(model)
    assert trainable == 4 * 2 * (16 + 16) + (16 * 3 + 3)  # (lora.7) per layer, plus the head
    randomize_lora(model)
    with torch.no_grad():
        model.classifier.weight.add_(0.1)
    fresh = copy.deepcopy(pristine)
    apply_lora(fresh, ["q_proj", "v_proj"], r=2, alpha=4, trainable_modules=("classifier",))
    load_lora_state_dict(fresh, lora_state_dict(model))
    assert torch.equal(fresh(ids).logits, model(ids).logits)
    assert not torch.allclose(fresh(ids).logits, logits0, atol=1e-4)
