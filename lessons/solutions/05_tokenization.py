# %% [markdown]
# # Solutions to lesson 05's exercises

# %%
import torch

from minitx.tokenizers.wordpiece import WordPieceTokenizer


# %% [markdown]
# **1.** (adapter **mlm_masking**): select each ordinary token with probability p; of those, 80 % become the
# mask, 10 % a random ordinary token, 10 % stay; labels are the originals where selected, -100 elsewhere.

# %%
def mask_tokens(ids, vocab_size, mask_id, special_ids, p=0.15, generator=None):
    special = torch.isin(ids, torch.as_tensor(list(special_ids)))
    selected = (torch.rand(ids.shape, generator=generator) < p) & ~special
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    ordinary = torch.tensor([t for t in range(vocab_size) if t not in set(special_ids)])
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator)]
    inputs = torch.where(selected & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(selected & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


g = torch.Generator().manual_seed(0)
ids = torch.randint(5, 100, (400, 64))
ids[:, 0], ids[:, -1] = 1, 2  # [CLS], [SEP]
inputs, labels = mask_tokens(ids, 100, 4, special_ids=[0, 1, 2, 3, 4], generator=g)
sel = labels != -100
share = sel.float().mean().item() * 64 / 62
masked = (inputs[sel] == 4).float().mean().item()
kept = (inputs[sel] == ids[sel]).float().mean().item()
print(f"selected {share:.3f} of ordinary tokens; of those [MASK] {masked:.3f}, kept {kept:.3f}")
assert abs(share - 0.15) < 0.005 and abs(masked - 0.8) < 0.01 and abs(kept - 0.1 - 0.1 / 95) < 0.01
assert not sel[:, 0].any() and not sel[:, -1].any()

# %% [markdown]
# **2.** With a sentence about a zebra, `z` becomes a word-initial character of the training text, so `zebra`
# gets pieces; `xylophone` still starts with a character no word began with, so it stays `[UNK]`.

# %%
TEXT = ("Tokenization turns text into numbers. Subword units split rare words into frequent pieces, and "
        "rereading, relearning and rebuilding share them. ")
tok = WordPieceTokenizer.train([TEXT + "A zebra is not a horse."] * 4, vocab_size=250)
print("zebra ->", tok.tokenize_word("zebra"), " xylophone ->", tok.tokenize_word("xylophone"))
assert "[UNK]" not in tok.tokenize_word("zebra") and tok.tokenize_word("xylophone") == ["[UNK]"]
