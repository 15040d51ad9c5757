"""Pretraining recipes: pretrain (masked-language modelling), lm (causal language modelling), finetune
(classification), export (runs as Hugging Face directories). Thin, on top of `minitx.training`.
"""
