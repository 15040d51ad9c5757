"""minitx: a transformer built from scratch to be read, run and trusted.

Modules, lowest layer first (imports point down only):
functional -> attention, positional -> blocks -> model -> peft, train -> pretrain, finetune -> cli.
"""

__version__ = "0.1.0"
