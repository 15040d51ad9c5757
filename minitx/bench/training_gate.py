"""The correctness gate of the training benchmark: before a training step is timed, its model must compute
the reference's function -- the same loss and the same gradients, parameter by parameter, as a
`transformers.BertForMaskedLM` with eager attention holding the same weights, in fp32 with dropout off."""

from __future__ import annotations

import math

import torch
from torch import nn

from minitx.interop.bert import hf_to_minitx_names
from minitx.models.bert import BertForMaskedLM

# HF's decoder shares its weight and bias with the word embeddings and `cls.predictions.bias`; whichever name
# named_parameters() reports for a tied tensor, it has one minitx home.
_HF_TIED = {"cls.predictions.decoder.weight": "bert.embeddings.token.weight",
            "cls.predictions.decoder.bias": "mlm_head.bias"}


def _minitx_name(model: nn.Module, name: str, hf_names: dict[str, str]) -> str:
    if isinstance(model, BertForMaskedLM):
        return name
    return hf_names.get(name) or _HF_TIED.get(name) or f"unmapped:{name}"


def loss_and_grads(model: nn.Module, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one fp32 forward + backward with dropout off (eval mode), gradients keyed by
    minitx parameter names, so minitx and HF models compare name by name. Leaves no gradients behind."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    hf_names = hf_to_minitx_names(model.config.num_hidden_layers) if not isinstance(model, BertForMaskedLM) else {}
    grads = {_minitx_name(model, n, hf_names): p.grad.detach().double()
             for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return loss.item(), grads


def grad_error(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """||g - g_ref|| / ||g_ref|| over all parameters together; inf if the parameter names differ or a
    gradient is not finite."""
    if set(grads) != set(reference):
        return math.inf
    diff = sum(float((grads[k] - reference[k]).square().sum()) for k in reference)
    norm = sum(float(g.square().sum()) for g in reference.values())
    return math.sqrt(diff / max(norm, 1e-300)) if math.isfinite(diff) else math.inf


def gate(model: nn.Module, batch: dict, reference: tuple[float, dict], config) -> tuple[str, str | None, dict]:
    """(status "ok" or "failed", reason, measured values) against the reference (loss, gradients); `config`
    supplies `loss_tolerance` and `grad_tolerance` (a TrainingBenchConfig)."""
    loss, grads = loss_and_grads(model, batch)
    ref_loss, ref_grads = reference
    loss_diff, grad_err = abs(loss - ref_loss), grad_error(grads, ref_grads)
    values = {k: (v if math.isfinite(v) else None) for k, v in
              dict(loss=loss, reference_loss=ref_loss, loss_abs_diff=loss_diff, grad_rel_error=grad_err).items()}
    problems = []
    if not loss_diff <= config.loss_tolerance:
        problems.append(f"|loss - reference| = {loss_diff:.3g} > {config.loss_tolerance:g}")
    if not grad_err <= config.grad_tolerance:
        extra = sorted(set(grads) ^ set(ref_grads))[:3]
        problems.append(f"gradient relative error {grad_err:.3g} > {config.grad_tolerance:g}"
                        + (f" (parameters differ: {extra})" if extra else ""))
    if problems:
        return "failed", "gate against the HF eager reference (fp32, dropout off): " + "; ".join(problems), values
    return "ok", None, values
