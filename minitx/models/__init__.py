"""Model families built from minitx's blocks. The BERT encoder lives in `minitx.model` (its public home);
the GPT-2-style decoder in `minitx.models.gpt`."""

from minitx.models.gpt import GPT, GPTConfig, CausalLMOutput, gelu_tanh

__all__ = ["GPT", "GPTConfig", "CausalLMOutput", "gelu_tanh"]
