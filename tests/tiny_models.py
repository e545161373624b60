"""Tiny randomly initialised Mamba / Mamba2 models and a tiny byte-level BPE, for the infill and
evaluate tests (fast to build; not trained, so tests check behaviour, never quality)."""
from __future__ import annotations

import inspect
import json
import os
import textwrap

import torch

from mamba_nb.tokenizer import EOT, SPECIAL_TOKENS

CODE = textwrap.dedent('''
    def add(a, b):
        """Return the sum."""
        return a + b


    class Point:
        def __init__(self, x, y):
            self.x = x
            self.y = y

        def norm(self):
            return (self.x ** 2 + self.y ** 2) ** 0.5
''')


def tiny_bpe(special: bool = True, vocab_size: int = 400):
    """A byte-level BPE trained on two stdlib modules (its merges join newline + indentation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [inspect.getsource(json), inspect.getsource(os), CODE]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS if special else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    kw = {"eos_token": EOT, "additional_special_tokens": SPECIAL_TOKENS[1:]} if special else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def tiny_model(arch: str, tokenizer, seed: int = 0):
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    vocab = len(tokenizer) + 3  # padded like the project's checkpoints: rows no token uses
    if arch == "mamba":
        model = MambaForCausalLM(MambaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, state_size=8))
    else:
        model = Mamba2ForCausalLM(Mamba2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, state_size=8,
                                               num_heads=4, head_dim=16, n_groups=1, chunk_size=16))
    return model.eval()
