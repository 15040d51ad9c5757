"""Generation: the sampling loop (generate, iter_generate), how the next token is chosen (sampling), beam search
(beam) and the encoder-decoder loop (encoder_decoder). The KV cache lives in the model (`minitx.attention.cache`)."""
