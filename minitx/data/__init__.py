"""Data: synthetic (the built-in language), text_files and text (real text: split, pack, shuffle), mlm
(masking and batches), corpora (built-in real corpora shipped with the package).
"""
