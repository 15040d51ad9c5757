"""Training: config (TrainConfig), loop (train), optim (AdamW), checkpoint, guards, distributed, compile."""
