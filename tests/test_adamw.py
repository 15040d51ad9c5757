"""minitx.training.optim.AdamW, the hand-written (opt.1)-(opt.2), against torch.optim.AdamW: bit for bit on the same
gradients, checkpoints that load into either, the rate the loop sets per step, and clear errors.
"""

import io
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.training import optim
from minitx.training.optim import AdamW, parameter_groups


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))


def _train(model, opt, steps, seed=1, lrs=None):
    """`steps` updates on fixed random batches; the rate changed before each step when `lrs` is given."""
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        x = torch.randn(9, 5, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _pair(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1):
    a, b = _model(), _model()
    mine = AdamW(parameter_groups(a, weight_decay), lr=lr, betas=betas, eps=eps)
    theirs = torch.optim.AdamW(parameter_groups(b, weight_decay), lr=lr, betas=betas, eps=eps)
    return a, mine, b, theirs


@settings(max_examples=15, deadline=None)
@given(lr=st.floats(1e-4, 1e-1), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.5, 0.9999),
       weight_decay=st.sampled_from([0.0, 0.01, 0.3]), steps=st.integers(1, 12))
def test_bit_for_bit_equal_to_torch(lr, beta1, beta2, weight_decay, steps):
    """Same arithmetic in the same order as torch's single-tensor AdamW: the weights are *equal*, not close."""
    a, mine, b, theirs = _pair(lr, (beta1, beta2), 1e-8, weight_decay)
    lrs = [lr * (t + 1) / steps for t in range(steps)]  # a rate that changes every step, as the schedule does
    _train(a, mine, steps, lrs=lrs)
    _train(b, theirs, steps, lrs=lrs)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def _mixed_model(half=torch.bfloat16, seed=0):
    """Tensors of three dtypes and many sizes, so the multi-tensor path makes several (device, dtype) groups."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 6),
                                torch.nn.Linear(6, 3))
    model[2].double()
    model[3].to(half)
    return model


def _train_mixed(model, opt, steps, lrs, seed=1):
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        x = torch.randn(9, 5, generator=g)
        h = model[2](model[1](model[0](x)).double()).float()
        loss = model[3](h.to(model[3].weight.dtype)).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if t % 3 == 2:
            model[0].bias.grad = None  # a tensor without a gradient this step: skipped, its step count lags
        opt.step()


@settings(max_examples=10, deadline=None)
@given(lr=st.floats(1e-4, 1e-1), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.5, 0.9999),
       weight_decay=st.sampled_from([0.0, 0.01, 0.3]), steps=st.integers(1, 8), chunk=st.sampled_from([1, 40, 1 << 22]))
def test_multi_tensor_path_is_bit_for_bit_torch_on_the_cpu(lr, beta1, beta2, weight_decay, steps, chunk):
    """foreach=True (one torch._foreach_* op per line of (opt.1)-(opt.2), per dtype and chunk) against torch's
    AdamW with foreach=False, and minitx's own single-tensor path: on a CPU the same bits in float32, float64
    and bfloat16, with steps that lag where a gradient was missing; and torch's foreach=True in float32/64."""
    lrs = [lr * (t + 1) / steps for t in range(steps)]
    hyper = {"lr": lr, "betas": (beta1, beta2), "weight_decay": weight_decay}
    for half in (torch.bfloat16, torch.float32):
        models, opts = [], []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(optim, "FOREACH_CHUNK_NUMEL", chunk)  # 1: every tensor its own chunk; 40: a few
            for cls, foreach in ((AdamW, True), (AdamW, False), (torch.optim.AdamW, True),
                                 (torch.optim.AdamW, False)):
                models.append(_mixed_model(half))
                opts.append(cls(parameter_groups(models[-1], weight_decay), **hyper, foreach=foreach))
                _train_mixed(models[-1], opts[-1], steps, lrs)
        for named in zip(*(m.named_parameters() for m in models)):
            name, (mine_multi, mine_single, theirs_multi, theirs_single) = named[0][0], [p for _, p in named]
            assert torch.equal(mine_multi, theirs_single) and torch.equal(mine_single, theirs_single), name
            if half == torch.float32:
                # with a bfloat16 layer torch's foreach differs: on a CPU it rounds 1 - lr*wd and beta2 to
                # bfloat16 first (optim._factor), and the gradients of every other layer follow
                assert torch.equal(mine_multi, theirs_multi), name
        for state in (opts[0].state, opts[1].state):
            steps_seen = {float(s["step"]) for s in state.values()}
            assert steps_seen <= {float(steps), float(steps - steps // 3)}


def test_foreach_chooses_the_path(monkeypatch):
    calls = []
    real = torch._foreach_addcdiv_
    monkeypatch.setattr(torch, "_foreach_addcdiv_", lambda *a, **k: (calls.append(len(a[0])), real(*a, **k)))
    for foreach, expected in ((None, [6]), (True, [6]), (False, [])):
        calls.clear()
        model = _model()
        _train(model, AdamW(model.parameters(), foreach=foreach), 1)
        assert calls == expected, foreach  # one multi-tensor update of all 6 tensors, or none
    calls.clear()
    monkeypatch.setattr(optim, "FOREACH_CHUNK_NUMEL", 40)  # 35 | 7 + 7 + 7 | 21 + 3 elements
    model = _model()
    _train(model, AdamW(model.parameters()), 1)
    assert calls == [1, 3, 2]
    with pytest.raises(ValueError, match="foreach"):
        AdamW(model.parameters(), foreach="yes")
    assert AdamW(model.parameters(), foreach=False).state_dict()["param_groups"][0]["foreach"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_both_paths_equal_torchs_on_cuda():
    """On CUDA each path is bit for bit torch's same path; the two paths may differ in the last bit (the
    single-tensor path's division by a host scalar is a multiplication by its reciprocal on CUDA)."""
    results = {}
    for foreach in (True, False):
        for lib in ("minitx", "torch"):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.LayerNorm(256),
                                        torch.nn.Linear(256, 8)).cuda()
            cls = AdamW if lib == "minitx" else torch.optim.AdamW
            opt = cls(parameter_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.99), foreach=foreach)
            g = torch.Generator(device="cuda").manual_seed(1)
            for _ in range(5):
                loss = model(torch.randn(32, 64, device="cuda", generator=g)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            results[lib, foreach] = [p.detach().clone() for p in model.parameters()]
    for foreach in (True, False):
        assert all(torch.equal(p, q) for p, q in zip(results["minitx", foreach], results["torch", foreach]))
    for p, q in zip(results["minitx", True], results["minitx", False]):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_the_update_is_the_documented_equation():
    """(opt.1)-(opt.2) written with m̂ and v̂ for one tensor and two steps, in float64."""
    theta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    lr, (b1, b2), eps, lam = 0.1, (0.8, 0.9), 1e-3, 0.2
    opt = AdamW([theta], lr=lr, betas=(b1, b2), eps=eps, weight_decay=lam)
    grads = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([0.3, 0.1, -1.0], dtype=torch.float64)]
    want, m, v = theta.detach().clone(), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        theta.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        want = want - lr * lam * want - lr * m_hat / (v_hat.sqrt() + eps)
    torch.testing.assert_close(theta.detach(), want, rtol=1e-12, atol=1e-12)


def test_tensors_without_a_gradient_are_left_alone():
    a = torch.nn.Linear(3, 3)
    frozen = a.weight.detach().clone()
    opt = AdamW([a.weight, a.bias], lr=0.1, weight_decay=0.5)
    a.bias.grad = torch.ones(3)
    opt.step()
    assert torch.equal(a.weight.detach(), frozen) and a.weight not in opt.state  # not even decayed
    assert not torch.equal(a.bias.detach(), torch.zeros(3)) or a.bias.abs().sum() > 0


def _saved(state_dict):
    """Through torch.save and torch.load, as a checkpoint goes (a live state_dict shares the optimizer's tensors)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def test_state_dict_loads_both_ways_and_continues_identically():
    """A checkpoint of torch's AdamW resumes in minitx's (and back), with the same next steps as never stopping."""
    a, mine, b, theirs = _pair()
    _train(a, mine, 4)
    _train(b, theirs, 4)
    sd_mine, sd_theirs = _saved(mine.state_dict()), _saved(theirs.state_dict())
    assert sd_mine["param_groups"] == sd_theirs["param_groups"]  # the same layout, flags and names included
    assert sd_mine["state"].keys() == sd_theirs["state"].keys()
    for k, s in sd_mine["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s[key], sd_theirs["state"][k][key]) and s[key].dtype == sd_theirs["state"][k][key].dtype
    # swap: minitx's optimizer continues from torch's state, torch's from minitx's
    a2, b2 = _model(), _model()
    a2.load_state_dict(b.state_dict())
    b2.load_state_dict(a.state_dict())
    mine2 = AdamW(parameter_groups(a2, 0.1), lr=3e-3, betas=(0.9, 0.99))
    mine2.load_state_dict(sd_theirs)
    theirs2 = torch.optim.AdamW(parameter_groups(b2, 0.1), lr=3e-3, betas=(0.9, 0.99))
    theirs2.load_state_dict(sd_mine)
    for model, opt in ((a, mine), (b, theirs), (a2, mine2), (b2, theirs2)):
        _train(model, opt, 3, seed=7)
    for p, q, r, s in zip(a.parameters(), b.parameters(), a2.parameters(), b2.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r) and torch.equal(p, s)


def test_load_state_dict_copies_rather_than_aliases():
    a, mine, b, theirs = _pair()
    _train(b, theirs, 2)
    sd = theirs.state_dict()
    mine.load_state_dict(sd)
    before = sd["state"][0]["exp_avg"].clone()
    _train(a, mine, 1)
    assert torch.equal(sd["state"][0]["exp_avg"], before)


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1.0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"), ({"betas": (0.9,)}, "betas"),
    ({"eps": -1e-8}, "eps"), ({"weight_decay": -0.1}, "weight_decay"), ({"lr": float("nan")}, "lr"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW(torch.nn.Linear(2, 2).parameters(), **kwargs)


def test_bad_params_and_bad_states_are_refused():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="params"):
        AdamW([])
    with pytest.raises(ValueError, match="more than one"):
        AdamW([{"params": [lin.weight]}, {"params": [lin.weight, lin.bias]}])
    with pytest.raises(TypeError, match="floating-point"):
        AdamW([torch.arange(3)])
    opt = AdamW([{"params": [lin.weight]}, {"params": [lin.bias]}])
    with pytest.raises(ValueError, match="has 1 parameter groups, this optimizer 2"):
        opt.load_state_dict(AdamW([lin.weight, lin.bias]).state_dict())
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"model": {}})
    other = torch.nn.Linear(3, 2)
    other_opt = AdamW([{"params": [other.weight]}, {"params": [other.bias]}])
    other(torch.randn(1, 3)).sum().backward()
    other_opt.step()
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other_opt.state_dict())


def test_building_it_does_not_import_dynamo():
    """The reason it is not a torch.optim.Optimizer: that base class imports torch._dynamo (~145 MiB)."""
    code = ("import sys, torch; from minitx.training.optim import AdamW; m = torch.nn.Linear(3, 3); o = AdamW(m.parameters());"
            " m(torch.randn(2, 3)).sum().backward(); o.step(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0);"
            " print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
