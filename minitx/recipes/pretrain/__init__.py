"""Recipe `minitx pretrain`: config (PretrainConfig), data (its corpora), evaluate (held-out loss, probes),
recipe (run_pretraining), fill_mask (using a trained run).
"""
