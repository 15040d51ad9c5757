"""Tokenizers: wordpiece (+ wordpiece_trainer, pretokenize), bpe (byte-level, GPT-2's; + bpe_trainer), char, and
files (one JSON file per tokenizer); both trainers run pair_merges (the fast merge loop) and report through
progress. Import each from its module.
"""
