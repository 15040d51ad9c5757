# %% [markdown]
# # Solutions to lesson 10's exercises

# %%
import statistics
import time

import torch

from minitx.bench import attention_flops

# %% [markdown]
# **1.** Two matrix products of $2ND$ FLOPs per pair ($QK^\top$ and $PV$): $4BHN^2D$, halved under a causal mask
# ($N^2/2$ pairs in minitx's count; the exact $N(N+1)/2$ differs by $1/N$).

# %%
B, H, N, D = 1, 8, 2048, 64
by_hand = 4 * B * H * (N * (N + 1) // 2) * D
print(f"by hand {by_hand:.4g}, minitx {attention_flops(B, H, N, D, causal=True):.4g}")
assert abs(attention_flops(B, H, N, D, causal=True) / by_hand - 1) < 0.01

# %% [markdown]
# **2.** The first calls pay one-time costs (allocation, caches, thread start-up): they inflate the spread (IQR)
# and sometimes the median; dropping them changes the IQR most.

# %%
torch.set_num_threads(1)
a = torch.randn(512, 512)
times = []
for _ in range(30):
    began = time.perf_counter()
    a @ a
    times.append(1000 * (time.perf_counter() - began))


def iqr(values):
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


print(f"all 30: median {statistics.median(times):.3f} ms, IQR {iqr(times):.3f};  last 25: median "
      f"{statistics.median(times[5:]):.3f} ms, IQR {iqr(times[5:]):.3f}")
# (timings: printed, not asserted; a busy machine changes them)
