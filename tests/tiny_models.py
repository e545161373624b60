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


def hf_mamba(arch: str, seed: int = 0, **overrides):
    """A tiny HF `MambaForCausalLM` / `Mamba2ForCausalLM` (fp32, eval mode) with seeded random weights
    moved away from their init (A, dt, D and the norms vary per channel; the embeddings are larger),
    so logits, states and greedy tokens differ from position to position. `overrides`: config fields."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    if arch == "mamba":
        fields = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, state_size=4, conv_kernel=4)
        fields.update(overrides)
        model = MambaForCausalLM(MambaConfig(**fields))
    else:
        fields = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, state_size=4, head_dim=8, num_heads=4,
                      n_groups=2, chunk_size=8, eos_token_id=None)
        fields.update(overrides)
        model = Mamba2ForCausalLM(Mamba2Config(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log") or name.endswith("dt_proj.bias") or name.endswith("dt_bias"):
                p.add_(0.5 * torch.randn_like(p))
            elif name.endswith(".D") or name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif "embeddings" in name:
                p.normal_(0, 1.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
            elif p.dim() == 2:  # the projections: strong enough that the mixers, not the tied embedding, decide
                p.normal_(0, 2.0 / p.shape[1] ** 0.5)
    return model.eval()
