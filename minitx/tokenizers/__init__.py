"""Tokenizers: wordpiece (+ wordpiece_trainer, pretokenize), bpe (byte-level, GPT-2's), char, and files
(one JSON file per tokenizer). Import each from its module.
"""
