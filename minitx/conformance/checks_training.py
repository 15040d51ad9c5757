"""Conformance checks that need state or statistics: AdamW over several steps, the LR schedule, clipping, masking.

AdamW: the learner's class and minitx's (bit for bit torch.optim.AdamW's arithmetic) take the same gradients for
T steps while the rate changes at every step (as a schedule sets `param_groups[i]["lr"]`); the parameters are
compared after every step, within the accuracy rule of `cases.compare` (float32 against a float64 run).

MLM masking is random, so it is checked by statistics over K calls on a (32, 64) batch (16k tokens, ~2.5k
selected at p = 0.15): exact rules (specials never selected, labels = the original id where selected and -100
elsewhere, unselected tokens unchanged, replacements inside the vocabulary, the same generator state gives the
same output) and three proportions, each a z-test at 5 sigma: the selected share of candidates (p), [MASK]
among selected (0.8), unchanged among selected (0.1, plus 0.1/V for a random id that equals the original).
A correct implementation fails one of these three with probability about 3 * 6e-7 per case.
"""

from __future__ import annotations

import math

import torch

from minitx.conformance import references as R
from minitx.conformance.cases import Adapter, Mismatch, call, case, compare, randn

F32 = torch.float32
ADAMW_HINT = ("decay is decoupled, p <- p (1 - lr wd), not wd p added to the gradient; bias-correct both moments "
              "with t starting at 1; eps outside the square root; read lr from param_groups at every step")


# ------------------------------------------------------------------------------------------------- AdamW

def _adamw_cases(st):
    return st.builds(lambda shapes, steps, lrs, betas, eps, wd, skip, seed: case(
        shapes=shapes, steps=steps, lrs=lrs, betas=betas, eps=eps, weight_decay=wd, skip_grad=skip, seed=seed),
        st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple), min_size=1, max_size=3)
        .map(tuple), st.integers(1, 6), st.lists(st.sampled_from([1e-3, 1e-2, 0.1]), min_size=6, max_size=6)
        .map(tuple), st.sampled_from([(0.9, 0.999), (0.8, 0.95)]), st.sampled_from([1e-8, 1e-3]),
        st.sampled_from([0.0, 0.1]), st.booleans(), st.integers(0, 2**16))


def _adamw_run(fn, c):
    cls = call("get_adamw_cls", fn)
    g = c.generator()
    start = [randn(s, g) for s in c.shapes]
    mine = [t.to(F32).requires_grad_(True) for t in start]
    ref64, ref32 = [t.clone().requires_grad_(True) for t in start], [t.to(F32).requires_grad_(True) for t in start]
    kw = dict(lr=c.lrs[0], betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)
    opt = call("AdamW(params, lr, betas, eps, weight_decay)", cls, mine, **kw)
    ref_opts = [R.AdamW(ref64, **kw), R.AdamW(ref32, **kw)]
    for step in range(1, c.steps + 1):
        lr = c.lrs[step - 1]
        grads = [randn(s, g) for s in c.shapes]
        skipped = c.skip_grad and len(c.shapes) > 1 and step % 2 == 0  # the last tensor has no grad this step
        groups = getattr(opt, "param_groups", None)
        if not groups:
            raise Mismatch("the optimizer has no param_groups", "opt.2", "keep torch.optim's param_groups: a list "
                           "of dicts with 'params' and 'lr', which a schedule sets before each step")
        for o in [opt, *ref_opts]:
            for group in o.param_groups:
                group["lr"] = lr
        for params in (mine, ref64, ref32):
            for i, (p, grad) in enumerate(zip(params, grads)):
                p.grad = None if skipped and i == len(params) - 1 else grad.to(p.dtype).clone()
        call("step()", opt.step)
        for o in ref_opts:
            o.step()
        for i, (p, r64, r32) in enumerate(zip(mine, ref64, ref32)):
            compare(f"parameter {i + 1} after step {step} (lr {lr})", p.detach(), r64.detach(), r32.detach(), F32,
                    "opt.1-opt.2", ADAMW_HINT)
        call("zero_grad()", opt.zero_grad)
        if any(p.grad is not None and bool(p.grad.ne(0).any()) for p in mine):
            raise Mismatch(f"zero_grad() after step {step} left nonzero gradients", "opt.2",
                           "zero_grad sets every parameter's .grad to None (or to zeros)")


ADAMW = Adapter("adamw", "get_adamw_cls", "get_adamw_cls() -> class used like torch.optim.AdamW", 0, (),
                _adamw_cases,
                (case(shapes=((3, 2), (4,)), steps=5, lrs=(1e-2, 0.1, 1e-3, 1e-2, 0.1, 0.1), betas=(0.9, 0.999),
                      eps=1e-8, weight_decay=0.1, skip_grad=True, seed=60),
                 case(shapes=((4,),), steps=2, lrs=(0.1,) * 6, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.0,
                      skip_grad=False, seed=61)), _adamw_run)


# ------------------------------------------------------------------------------------------ cosine schedule

def _cosine_cases(st):
    return st.builds(lambda warmup, length, max_lr, ratio: case(warmup_steps=warmup, total_steps=warmup + length,
                                                               max_lr=max_lr, min_lr=max_lr * ratio),
                     st.integers(0, 10), st.integers(1, 30), st.sampled_from([1.0, 3e-4, 0.5]),
                     st.sampled_from([0.1, 0.0]))


def _cosine_run(fn, c):
    for step in range(0, c.total_steps + 4):
        args = (step, c.max_lr, c.min_lr, c.warmup_steps, c.total_steps)
        got = call("lr_cosine_schedule", fn, *args)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            raise Mismatch(f"returned {type(got).__name__} at step {step}, expected a number", "opt.5",
                           "return a Python float")
        want = R.lr_cosine_schedule(*args)
        if not abs(got - want) <= 1e-6 * c.max_lr:
            label = "opt.5" if step < c.warmup_steps else "opt.7"
            raise Mismatch(f"at step {step}: got {got:.6g}, expected {want:.6g}", label,
                           "warmup: max_lr * t / warmup_steps for t < warmup_steps; then min_lr + (max_lr - min_lr) "
                           "(1 + cos(pi (t - warmup) / (total - warmup))) / 2; min_lr after total_steps")


COSINE_SCHEDULE = Adapter("cosine_schedule", "lr_cosine_schedule",
                          "lr_cosine_schedule(step, max_lr, min_lr, warmup_steps, total_steps)", 5, (),
                          _cosine_cases, (case(warmup_steps=4, total_steps=13, max_lr=1.0, min_lr=0.1),),
                          _cosine_run)


# --------------------------------------------------------------------------------------- gradient clipping

def _clip_cases(st):
    return st.builds(lambda shapes, scale, max_norm, none, seed: case(shapes=shapes, grad_scale=scale,
                                                                      max_norm=max_norm, no_grad=none, seed=seed),
                     st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple), min_size=1, max_size=4)
                     .map(tuple), st.sampled_from([0.1, 1.0, 10.0]), st.sampled_from([0.5, 1.0, 5.0]),
                     st.booleans(), st.integers(0, 2**16))


def _clip_run(fn, c):
    g = c.generator()
    grads = [randn(s, g, scale=c.grad_scale) for s in c.shapes]
    params = [[torch.zeros(s, dtype=d, requires_grad=True) for s in c.shapes] for d in (F32, torch.float64)]
    for ps in params:
        for i, (p, grad) in enumerate(zip(ps, grads)):
            p.grad = None if c.no_grad and i == 0 and len(ps) > 1 else grad.to(p.dtype).clone()
    call("clip_gradients", fn, params[0], c.max_norm)
    R.clip_gradients(params[1], c.max_norm)
    norm = math.sqrt(sum(float(x.grad.pow(2).sum()) for x in params[1] if x.grad is not None))
    for i, (p, r) in enumerate(zip(*params)):
        if r.grad is None:
            if p.grad is not None:
                raise Mismatch(f"tensor {i + 1} had no gradient and now has one", "opt.8", "skip p.grad is None")
            continue
        compare(f"gradient {i + 1} after clipping (global norm {norm:.3g}, max_norm {c.max_norm})", p.grad, r.grad,
                None, F32, "opt.8", "one global L2 norm over all gradients; scale every gradient in place by "
                                    "max_norm / (norm + 1e-6) only if norm > max_norm")


GRADIENT_CLIPPING = Adapter("gradient_clipping", "clip_gradients", "clip_gradients(params, max_norm)", 2, (),
                            _clip_cases,
                            (case(shapes=((3,), (2, 2)), grad_scale=10.0, max_norm=1.0, no_grad=False, seed=70),
                             case(shapes=((3,), (2, 2)), grad_scale=0.1, max_norm=5.0, no_grad=True, seed=71)),
                            _clip_run)


# ------------------------------------------------------------------------------------------- MLM masking

SPECIALS = (0, 1, 2, 3)  # [PAD], [CLS], [SEP], [MASK]
MASK_ID = 3
CALLS = 8


def _mlm_cases(st):
    return st.builds(lambda vocab, p, seed: case(vocab_size=vocab, p=p, seed=seed), st.sampled_from([50, 1000]),
                     st.sampled_from([0.15, 0.3]), st.integers(0, 2**16))


def _mlm_batch(c):
    g = c.generator()
    ids = torch.randint(len(SPECIALS), c.vocab_size, (32, 64), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    ids[::3, -10:] = 0  # padding in every third row
    ids[1::4, 20] = 2  # a [SEP] inside a row (a sentence pair)
    return ids


def _z(count, total, share):
    return (count - total * share) / math.sqrt(max(total * share * (1 - share), 1e-12))


def _mlm_run(fn, c):
    ids = _mlm_batch(c)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    counts = {"candidates": 0, "selected": 0, "masked": 0, "kept": 0}
    for k in range(CALLS):
        out = call("mask_tokens", fn, ids.clone(), c.vocab_size, MASK_ID, list(SPECIALS), p=c.p,
                   generator=c.generator(100 + k))
        again = call("mask_tokens", fn, ids.clone(), c.vocab_size, MASK_ID, list(SPECIALS), p=c.p,
                     generator=c.generator(100 + k))
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise Mismatch("mask_tokens must return (inputs, labels), two tensors", "mlm.3", "return a tuple")
        inputs, labels = out
        for name, t in (("inputs", inputs), ("labels", labels)):
            if t.shape != ids.shape or t.is_floating_point():
                raise Mismatch(f"{name}: expected an integer tensor of shape {tuple(ids.shape)}, got {t.dtype} "
                               f"{tuple(t.shape)}", "mlm.3", "return tensors shaped like ids")
        if not all(torch.equal(a, b) for a, b in zip(out, again)):
            raise Mismatch("two calls with generators in the same state gave different outputs", "mlm.2",
                           "draw every random number from the `generator` argument")
        selected = labels != -100
        _mlm_rules(ids, special, inputs, labels, selected, c)
        counts["candidates"] += int((~special).sum())
        counts["selected"] += int(selected.sum())
        counts["masked"] += int((inputs[selected] == MASK_ID).sum())
        counts["kept"] += int((inputs[selected] == ids[selected]).sum())
    kept_share = 0.1 + 0.1 / (c.vocab_size - len(SPECIALS))
    for what, count, total, share, label, hint in (
            ("selected share of non-special tokens", counts["selected"], counts["candidates"], c.p, "mlm.2",
             "select each non-special token independently with probability p (the one passed in)"),
            ("[MASK] share of selected tokens", counts["masked"], counts["selected"], 0.8, "mlm.3",
             "80% of the selected tokens become [MASK]"),
            ("unchanged share of selected tokens", counts["kept"], counts["selected"], kept_share, "mlm.3",
             "10% of the selected tokens stay as they are (and 10% become a random id)")):
        z = _z(count, total, share)
        if abs(z) > 5:
            raise Mismatch(f"{what} is {count / max(total, 1):.4f} over {CALLS} calls ({count} of {total}), expected "
                           f"{share:.4f}: {z:+.1f} standard deviations", label, hint)


def _mlm_rules(ids, special, inputs, labels, selected, c):
    if (selected & special).any():
        where = tuple(int(i) for i in (selected & special).nonzero()[0])
        raise Mismatch(f"special token {int(ids[where])} at {where} was selected", "mlm.2",
                       "never select a special id ([CLS], [SEP], [PAD], [MASK]) wherever it stands")
    bad = selected & (labels != ids)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise Mismatch(f"labels{list(where)} = {int(labels[where])}, the original id is {int(ids[where])}", "mlm.3",
                       "labels hold the *original* id at selected positions and -100 everywhere else")
    changed = ~selected & (inputs != ids)
    if changed.any():
        where = tuple(int(i) for i in changed.nonzero()[0])
        raise Mismatch(f"inputs{list(where)} changed but its label is -100", "mlm.3",
                       "only selected positions are corrupted; every corrupted position gets its label")
    if ((inputs < 0) | (inputs >= c.vocab_size)).any():
        raise Mismatch("a replacement id is outside [0, vocab_size)", "mlm.3", "draw random ids below vocab_size")


MLM_MASKING = Adapter("mlm_masking", "mask_tokens",
                      "mask_tokens(ids, vocab_size, mask_id, special_ids, p=0.15, generator=None)", 4,
                      ("p", "generator"), _mlm_cases, (case(vocab_size=1000, p=0.3, seed=80),), _mlm_run,
                      max_examples=4)

__all__ = ["ADAMW", "COSINE_SCHEDULE", "GRADIENT_CLIPPING", "MLM_MASKING"]
