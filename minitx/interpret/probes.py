"""Linear probes on cached activations: does a layer's residual stream hold a property *linearly*?

A probe is multinomial logistic regression, softmax(W x + b), fitted by L-BFGS on a training share of the
examples with an L2 penalty (interp.11); its held-out accuracy is set against the majority-class rate.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as torch_F


class Probe(NamedTuple):
    weight: torch.Tensor     # (K, C)
    bias: torch.Tensor       # (K,)
    train_accuracy: float
    test_accuracy: float
    majority: float          # the held-out accuracy of always answering the most frequent training class

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() @ self.weight.T + self.bias).argmax(-1)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, *, test_fraction: float = 0.25, l2: float = 1e-3,
              steps: int = 100, seed: int = 0) -> Probe:
    """Fit (interp.11) on a random (seeded) 1 - `test_fraction` of the rows of `features` (n, C) with integer
    `labels` (n,), and report train and held-out accuracy. Features are standardised on the training rows."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features: expected a (n, C) tensor, got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    if not isinstance(labels, torch.Tensor) or labels.shape != features.shape[:1] or labels.dtype != torch.long:
        raise ValueError(f"labels: expected an int64 tensor of shape ({features.shape[0]},), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    n = features.shape[0]
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 2:
        raise ValueError(f"features: expected enough rows for a train and a test share, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    x = features.detach().double()
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    k = int(labels.max()) + 1
    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch_F.cross_entropy(x[train] @ w.T + b, labels[train]) + l2 * w.pow(2).sum()  # (interp.11)
        loss.backward()
        return loss
    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = (w / std).detach(), (b - (w / std) @ mean).detach()  # back to the raw features' scale

    def accuracy(rows):
        return float(((features[rows].double() @ weight.T + bias).argmax(-1) == labels[rows]).double().mean())
    majority_class = torch.bincount(labels[train], minlength=k).argmax()
    return Probe(weight, bias, accuracy(train), accuracy(test), float((labels[test] == majority_class).double().mean()))
