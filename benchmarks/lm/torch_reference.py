"""nanoGPT's shakespeare_char recipe in plain torch modules, to measure its seed-to-seed spread beside minitx's.

Not minitx code and not nanoGPT's code: a written-out reference of what nanoGPT's model.py and train.py do with
`--device=cpu --compile=False --eval_iters=20 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0` (bias=False, torch's nn.LayerNorm /
nn.Linear / F.gelu / SDPA, torch.optim.AdamW), in nanoGPT's order: torch.manual_seed(seed) before the model,
batches from the global generator, an evaluation on 20 fresh batches of each split every 250 iterations, the
rate of iteration `it` = lr (it+1)/(warmup+1) then cosine to min_lr, the loop ending at iteration 2000's evaluation (2,000 updates).
The issue quotes one run of nanoGPT itself (seed 1337): val 1.886. Used by docs/results/lm_shakespeare.md:

    python3 benchmarks/lm/torch_reference.py --seed 1337 --out runs/ref_1337.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from minitx.recipes.lm.recipe import shakespeare_text

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, MAX_ITERS, DECAY_ITERS = 1e-3, 1e-4, 100, 2000, 2000
EVAL_INTERVAL, EVAL_ITERS = 250, 20


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(N_EMBD, bias=False), nn.LayerNorm(N_EMBD, bias=False)
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.attn_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False)
        self.mlp_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
        self.lm_head = nn.Linear(N_EMBD, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * N_LAYER))

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class _MinitxLoss(nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx, targets):
        return self.gpt(idx, targets=targets).loss


def _as_minitx(ref: RefGPT, vocab_size: int) -> nn.Module:
    """minitx's GPT holding `ref`'s weights (c_attn split into q, k, v), so both start from the same point."""
    from minitx.models.gpt import GPT, GPTConfig
    gpt = GPT(GPTConfig(vocab_size=vocab_size, max_position=BLOCK, d_model=N_EMBD, n_layers=N_LAYER, n_heads=N_HEAD,
                        bias=False, attention_backend="sdpa"))
    state = {"token.weight": ref.wte.weight, "position.weight": ref.wpe.weight, "final_norm.weight": ref.ln_f.weight}
    for i, b in enumerate(ref.h):
        q, k, v = b.c_attn.weight.chunk(3, dim=0)
        state.update({f"blocks.{i}.attention.q_proj.weight": q, f"blocks.{i}.attention.k_proj.weight": k,
                      f"blocks.{i}.attention.v_proj.weight": v, f"blocks.{i}.attention.out_proj.weight": b.attn_proj.weight,
                      f"blocks.{i}.attention_norm.weight": b.ln_1.weight, f"blocks.{i}.ffn_norm.weight": b.ln_2.weight,
                      f"blocks.{i}.feed_forward.fc_in.weight": b.c_fc.weight,
                      f"blocks.{i}.feed_forward.fc_out.weight": b.mlp_proj.weight})
    gpt.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return _MinitxLoss(gpt)


def get_lr(it):
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    ap.add_argument("--model", choices=("torch", "minitx"), default="torch",
                    help="minitx: minitx's GPT (bias=False, sdpa) with the reference's initial weights, same loop")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    text = shakespeare_text()
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([table[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    data = {"train": ids[:n], "val": ids[n:]}

    def get_batch(split):
        d = data[split]
        ix = torch.randint(len(d) - BLOCK, (BATCH,))
        return torch.stack([d[i:i + BLOCK] for i in ix]), torch.stack([d[i + 1:i + 1 + BLOCK] for i in ix])

    torch.manual_seed(args.seed)
    model = RefGPT(len(chars))
    if args.model == "minitx":
        rng = torch.get_rng_state()  # building minitx's GPT draws its own init: keep the batch stream the same
        model = _as_minitx(model, len(chars))
        torch.set_rng_state(rng)
    params = [p for p in model.parameters()]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99))

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {s: sum(float(model(*get_batch(s))) for _ in range(EVAL_ITERS)) / EVAL_ITERS for s in ("train", "val")}
        model.train()
        return out

    began, curve = time.perf_counter(), []
    x, y = get_batch("train")
    for it in range(MAX_ITERS + 1):
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        if it % EVAL_INTERVAL == 0:
            curve.append({"iter": it, **estimate_loss()})
            print(json.dumps(curve[-1]), flush=True)
        if it == MAX_ITERS:  # nanoGPT takes one more step after its last evaluation; nothing reads it
            break
        loss = model(x, y)
        x, y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():  # every validation character once, as minitx's val_loss_full_split (lm.split_loss)
        val = data["val"]
        n_win = (len(val) - 1) // BLOCK
        xs, ys = val[:n_win * BLOCK].view(n_win, BLOCK), val[1:n_win * BLOCK + 1].view(n_win, BLOCK)
        full_split = sum(float(model(xs[i:i + 16], ys[i:i + 16])) * len(xs[i:i + 16])
                         for i in range(0, n_win, 16)) / n_win
    result = {"seed": args.seed, "model": args.model, "val_loss": curve[-1]["val"],
              "val_loss_full_split": round(full_split, 4),
              "train_loss": curve[-1]["train"],
              "parameters": sum(p.numel() for p in model.parameters()), "wall_s": round(time.perf_counter() - began, 1),
              "curve": curve}
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
