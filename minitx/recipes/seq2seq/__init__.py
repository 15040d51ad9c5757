"""Sequence-to-sequence training (`minitx train-seq2seq`) and translation (`minitx translate`).

    data.py       the character vocabulary with its specials, parallel text (two files or TSV), batches
    metrics.py    exact match and corpus BLEU (sacreBLEU's 13a tokenization, checked against sacrebleu)
    recipe.py     Seq2SeqConfig, run_seq2seq: train a Transformer on the built-in dates or the user's pairs
    translate.py  load_seq2seq, translate, translate_main
"""
