"""Generation: the sampling loop (generate, iter_generate) and how the next token is chosen (sampling).
The KV cache lives in the model (`minitx.attention.cache`)."""
