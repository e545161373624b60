"""model.py: presets against the public checkpoints, the FIM-token resize, fine-tuning from a directory."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.config import ModelConfig
from mamba_nb.doc_reset import model_logits
from mamba_nb.model import (ARCHS, PEER_ARCHS, PRESETS, VOCAB_MULTIPLE, build_model, load_checkpoint, model_config,
                            padded_vocab_size, resize_embeddings)
from mamba_nb.tokenizer import EOT, SPECIAL_TOKENS, FimTokens, load_hf_tokenizer, train_bpe

CODE = ["def add(a, b):\n    return a + b\n", "class P:\n    def __init__(self, x):\n        self.x = x\n"] * 20


class VocabOnly:
    """Just enough of a tokenizer for config arithmetic: `n` ordinary ids, then the special tokens."""

    def __init__(self, n: int):
        self.n = n

    def get_vocab(self):
        vocab = {f"t{i}": i for i in range(self.n)}
        vocab.update({t: self.n + j for j, t in enumerate(SPECIAL_TOKENS)})
        return vocab


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CODE, vocab_size=300)


# Published sizes (config.json of state-spaces/mamba-*-hf and state-spaces/mamba2-*), in millions of
# parameters with the GPT-NeoX vocabulary (50277 ids, padded to 50280).
PUBLISHED = {
    ("mamba", "130m"): (768, 24, 129.1), ("mamba", "370m"): (1024, 48, 371.5),
    ("mamba", "790m"): (1536, 48, 793.2), ("mamba", "1.4b"): (2048, 48, 1372.2),
    ("mamba", "2.8b"): (2560, 64, 2768.3),
    ("mamba2", "130m"): (768, 24, 129.0), ("mamba2", "370m"): (1024, 48, 368.3),
    ("mamba2", "790m"): (1536, 48, 780.1), ("mamba2", "1.4b"): (2048, 48, 1343.7),
    ("mamba2", "2.8b"): (2560, 64, 2702.6),
}


@pytest.mark.parametrize("arch,preset", sorted(PUBLISHED))
def test_public_presets_match_published_checkpoints(arch, preset):
    from transformers import AutoModelForCausalLM

    hidden, layers, millions = PUBLISHED[(arch, preset)]
    cfg = model_config(ModelConfig(arch=arch, preset=preset), VocabOnly(50277 - len(SPECIAL_TOKENS)))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (hidden, layers, 50280)
    assert cfg.tie_word_embeddings
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


@given(st.integers(1, 70000))
def test_padded_vocab_covers_every_id_and_is_a_multiple(n):
    tokenizer = VocabOnly(n)
    padded = padded_vocab_size(tokenizer)
    ids = max(tokenizer.get_vocab().values()) + 1
    assert padded % VOCAB_MULTIPLE == 0 and ids <= padded < ids + VOCAB_MULTIPLE


@pytest.mark.parametrize("arch", ARCHS)
def test_every_small_preset_builds_and_runs(arch, tok, capsys):
    for preset in ("micro", "tiny"):
        model, scan = build_model(ModelConfig(arch=arch, preset=preset), tok)
        assert scan in ("kernels", "fast")
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert tied == model.config.tie_word_embeddings == (preset != "tiny")  # the course model is untied
        fim = FimTokens.from_tokenizer(tok)
        assert (model.config.eos_token_id, model.config.pad_token_id) == (fim.eot, fim.pad)
    printed = capsys.readouterr().out
    assert "selective scan:" in printed and "from scratch" in printed
    ids = torch.tensor([tok.encode("def f(x):\n    return x")])
    logits = model_logits(model, ids)
    assert logits.shape == (1, ids.shape[1], padded_vocab_size(tok))


def test_bad_arch_or_preset_names_the_value(tok):
    with pytest.raises(ValueError, match="'mamba3'.*--arch"):
        build_model(ModelConfig(arch="mamba3"), tok)
    with pytest.raises(ValueError, match="'huge'.*--preset"):
        build_model(ModelConfig(preset="huge"), tok)


def _micro(arch: str, vocab: int, tied: bool, seed: int = 0):
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    if arch == "mamba":
        return MambaForCausalLM(MambaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, state_size=4,
                                            tie_word_embeddings=tied))
    return Mamba2ForCausalLM(Mamba2Config(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, state_size=8,
                                          num_heads=2, head_dim=16, n_groups=1, chunk_size=8,
                                          tie_word_embeddings=tied))


@settings(max_examples=12, deadline=None)
@given(arch=st.sampled_from(ARCHS), old=st.integers(8, 64), added=st.integers(0, 20), tied=st.booleans())
def test_resize_keeps_every_existing_row_and_the_tie(arch, old, added, tied):
    model = _micro(arch, old, tied)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    assert resize_embeddings(model, old + added) == added
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    assert emb.shape == (old + added, 16) and head.shape == (old + added, 16)
    assert torch.equal(emb[:old], emb_before) and torch.equal(head[:old], head_before)
    assert (head is emb) == tied
    assert model.config.vocab_size == old + added
    for new, before in ((emb[old:], emb_before), (head[old:], head_before)):
        assert torch.isfinite(new).all()
        # near the old rows' mean: much closer to it than a typical old row is
        typical = (before - before.mean(0)).norm(dim=1).mean()
        assert ((new - before.mean(0)).norm(dim=1) < 0.1 * typical).all()
        if added > 1:
            assert not torch.equal(new[0], new[1])  # distinct rows, not one copy
    # the grown model runs on the new ids, and the optimizer would see one tensor if tied
    logits = model_logits(model, torch.tensor([[0, old + added - 1]]))
    assert logits.shape == (1, 2, old + added)
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})


def test_resize_never_shrinks():
    model = _micro("mamba", 40, tied=True)
    before = model.get_input_embeddings().weight.detach().clone()
    assert resize_embeddings(model, 32) == 0
    assert torch.equal(model.get_input_embeddings().weight, before)


def _plain_tokenizer_dir(path, tied: bool, arch: str):
    """A 'pretrained' model + tokenizer that predate FIM: only <|endoftext|>, as a hub checkpoint has."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CODE, trainers.BpeTrainer(vocab_size=290, special_tokens=[EOT],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    base = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT)
    model = _micro(arch, len(base), tied, seed=1)
    model.save_pretrained(path)
    base.save_pretrained(path)
    return model, base


@pytest.mark.parametrize("arch,tied", [("mamba", True), ("mamba2", False)])
def test_fine_tune_from_a_local_directory_adds_fim_rows(tmp_path, arch, tied, capsys):
    saved, base = _plain_tokenizer_dir(tmp_path / "base", tied, arch)
    tokenizer = load_hf_tokenizer(str(tmp_path / "base"))  # the dataset's tokenizer: base + FIM tokens
    assert len(tokenizer) == len(base) + len(SPECIAL_TOKENS) - 1
    model, _ = build_model(ModelConfig(pretrained=str(tmp_path / "base")), tokenizer)
    assert model.config.model_type == arch
    assert "fine-tuning" in capsys.readouterr().out
    old = len(base)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == padded_vocab_size(tokenizer) > old
    assert torch.equal(emb[:old], saved.get_input_embeddings().weight)
    assert torch.equal(head[:old], saved.get_output_embeddings().weight)
    assert (head is emb) == tied
    fim = FimTokens.from_tokenizer(tokenizer)
    assert model.config.pad_token_id == fim.pad
    ids = torch.tensor([[fim.prefix, 5, fim.suffix, 6, fim.middle]])
    assert torch.isfinite(model_logits(model, ids)).all()


def test_fine_tune_refuses_data_from_another_tokenizer(tmp_path, tok):
    _plain_tokenizer_dir(tmp_path / "base", True, "mamba")
    with pytest.raises(ValueError, match="build-dataset --tokenizer"):
        build_model(ModelConfig(pretrained=str(tmp_path / "base")), tok)


def test_pretrained_that_is_not_there_says_what_to_pass(tmp_path, tok):
    with pytest.raises(ValueError, match="save_pretrained or a hub id"):
        build_model(ModelConfig(pretrained=str(tmp_path / "nothing")), tok)


def test_load_checkpoint_accepts_run_dir_latest_and_plain_dirs(tmp_path, tok):
    model, _ = build_model(ModelConfig(preset="micro"), tok, verbose=False)
    (tmp_path / "run").mkdir()
    for d in (tmp_path / "run" / "latest", tmp_path / "plain"):
        model.save_pretrained(d)
        tok.save_pretrained(d)
    ids = torch.tensor([tok.encode("return a + b")])
    expected = model_logits(model, ids)
    for where in (tmp_path / "run", tmp_path / "run" / "latest", tmp_path / "plain"):
        loaded, loaded_tok = load_checkpoint(where)  # our model (its forward gives the logits), same weights
        assert loaded_tok.get_vocab() == tok.get_vocab()
        assert torch.allclose(loaded(ids), expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path / "missing")


def test_presets_table_is_complete():
    # every preset offers both Mamba architectures, so --arch never meets a missing size; the
    # transformer peer exists only where the course compares with it
    for name, by_arch in PRESETS.items():
        assert set(ARCHS) <= set(by_arch) <= set(ARCHS) | set(PEER_ARCHS), name
    assert {p for p, by_arch in PRESETS.items() if "llama" in by_arch} == {"micro", "tiny"}


def test_size_overrides_and_the_transformer_peer(tok):
    cfg = model_config(ModelConfig(preset="micro", hidden_size=48, num_hidden_layers=3, state_size=4), tok)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.state_size, cfg.intermediate_size) == (48, 3, 4, 96)
    model, scan = build_model(ModelConfig(arch="llama", preset="micro"), tok, verbose=False)
    assert scan == "attention" and model.config.model_type == "llama"
    assert model_logits(model, torch.tensor([[1, 2, 3]])).shape[-1] == padded_vocab_size(tok)
    for bad, match in ((dict(state_size=0), "state_size=0"), (dict(arch="llama", state_size=8), "Mamba only"),
                       (dict(arch="llama", preset="130m"), "no preset '130m'")):
        with pytest.raises(ValueError, match=match):
            model_config(ModelConfig(**{"preset": "micro", **bad}), tok)


def test_damaged_weights_of_the_llama_peer_say_so_as_a_mamba_s_do(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mamba_nb.model import load_model

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    with pytest.raises(ValueError, match=r"are damaged .*snapshots/"):
        load_model(tmp_path)
