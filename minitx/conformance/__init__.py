"""`minitx check`: a learner's own implementation against minitx's reference math (docs/checking.md).

Write any of the adapter functions (softmax, layer_norm, ..., the table in docs/checking.md) in a Python file,
then run `minitx check ADAPTERS.py`, or from Python `minitx.conformance.check(module_or_path)`, or in a test
suite through the pytest plugin `minitx.conformance.pytest_plugin` (the `minitx_check` fixture).

    cases.py            the failure type, the accuracy rule (attn.13), inputs from a seed, the Adapter record
    references.py       each adapter's reference: minitx's own functions (one table for rms_norm/silu/swiglu)
    checks_math.py      softmax, layer_norm, rms_norm, gelu, silu, swiglu, cross_entropy, causal_lm_loss
    checks_attention.py scaled_dot_product_attention, multi_head_attention, rope, sinusoidal_positions, lora_linear
    checks_training.py  adamw, cosine_schedule, gradient_clipping, mlm_masking
    runner.py           the adapter table, `check`, the report, `minitx check`
    pytest_plugin.py    the `minitx_check` fixture

Hypothesis draws the inputs: `pip install 'minitx[check]'`.
"""

from minitx.conformance.runner import ADAPTERS, Report, check

__all__ = ["check", "Report", "ADAPTERS"]
