"""Model families built from minitx's Blocks: bert (BertConfig, BertModel, BertForMaskedLM,
BertForSequenceClassification), gpt (GPTConfig, GPT), and inputs (the checks every model runs at its door).
A new family is a module here: a config plus parts for `minitx.nn.block.Block`.
"""
