"""Inference runs on our Mamba: a checkpoint loads as `model.lm.MambaLM` (a directory HF's
`save_pretrained` wrote included), and on the same weights it gives what HF's class gives: the same
greedy infills (every prompt layout, batched, stop strings, healing), the same middle losses and
suffix gain, the same `evaluate` report, within 1e-5."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml

from mamba_nb.config import EvalConfig
from mamba_nb.evaluate import evaluate
from mamba_nb.infill import infill
from mamba_nb.model import load_checkpoint, load_model
from mamba_nb.model.lm import MambaLM
from mamba_nb.suffix_gain import middle_losses, suffix_gain
from tiny_models import hf_mamba, tiny_bpe

from test_suffix_gain import holes  # the held-out holes of tiny_models.CODE

TOL = 1e-5

PREFIXES = ["def add(a, b):\n    return ", "class Point:\n    def __init__(self, x, y):\n        ", "", "x = ("]
SUFFIXES = ["\n\n\nclass Point:\n", "\n        self.y = y\n", "", ") + 1\n"]


@pytest.fixture(scope="module")
def tok():
    return tiny_bpe()


def _saved(directory, arch: str, tokenizer, context_len: int = 64):
    """An HF model (random weights moved off their init, so tokens differ from step to step) written
    by HF's own `save_pretrained`, as today's run directories are; returns HF's class reloaded from it."""
    from transformers import AutoModelForCausalLM

    hf_mamba(arch, vocab_size=len(tokenizer) + 3).save_pretrained(directory)  # padded: rows no token uses
    tokenizer.save_pretrained(directory)
    (directory / "run_config.yaml").write_text(yaml.safe_dump({"context_len": context_len, "seed": 0}))
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["mamba", "mamba2"])
def pair(request, tok, tmp_path_factory):
    """(HF's class, ours) with the same weights, from one run directory's latest/."""
    run = tmp_path_factory.mktemp(request.param) / "run"
    hf = _saved(run / "latest", request.param, tok)
    ours, loaded_tok = load_checkpoint(run)
    assert loaded_tok.get_vocab() == tok.get_vocab()
    return hf, ours


def test_a_checkpoint_loads_as_our_model(pair, tok):
    hf, ours = pair
    assert isinstance(ours, MambaLM) and not ours.training
    assert ours.name_or_path.endswith("latest")  # infill and evaluate read the run's settings there
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        want = hf(input_ids=ids, use_cache=False).logits
        got = ours(ids)
        exact = copy.deepcopy(hf).double()(input_ids=ids, use_cache=False).logits  # float64: the yardstick
    # Both float32 forms judged against float64: TOL, or 4x HF's own float32 error where this random
    # model is ill-conditioned (on Python 3.13's CUDA build of torch, on the CPU, ours was 1.07e-5 off
    # HF's float32 logits)
    scale = exact.abs().max()
    hf_error = (want.double() - exact).abs().max() / scale
    assert (got.double() - exact).abs().max() / scale <= max(TOL, 4 * hf_error)


@pytest.mark.parametrize("mode", ["psm", "spm", "lm"])
def test_greedy_infills_are_hfs(pair, tok, mode):
    hf, ours = pair
    for kwargs in (dict(batch_size=16), dict(batch_size=3, stop=["e", "("]), dict(heal=True, batch_size=2)):
        want = infill(hf, tok, PREFIXES, SUFFIXES, mode=mode, max_new_tokens=12, **kwargs)
        got = infill(ours, tok, PREFIXES, SUFFIXES, mode=mode, max_new_tokens=12, **kwargs)
        assert got == want, kwargs
    assert len({r.text for r in got}) > 1  # the rows really differ: the comparison is not vacuous


def test_sampling_and_best_of_run_on_ours(pair, tok):
    _, ours = pair
    a = infill(ours, tok, PREFIXES, SUFFIXES, temperature=0.8, top_p=0.9, best_of=3, seed=1, max_new_tokens=6)
    b = infill(ours, tok, PREFIXES, SUFFIXES, temperature=0.8, top_p=0.9, best_of=3, seed=1, max_new_tokens=6)
    assert a == b and len(a) == len(PREFIXES)  # seeded: the same samples again


def test_middle_losses_and_suffix_gain_are_hfs(pair, tok):
    hf, ours = pair
    tasks = holes()[:6]
    args = ([t.prefix for t in tasks], [t.middle for t in tasks], [t.suffix for t in tasks], "spm", 64)
    for want, got in zip(middle_losses(hf, tok, *args), middle_losses(ours, tok, *args)):
        assert got == pytest.approx(want, rel=TOL, abs=TOL)
    _assert_close(suffix_gain(ours, tok, tasks, context_len=64), suffix_gain(hf, tok, tasks, context_len=64))


def _assert_close(got, want, where: str = "") -> None:
    """Nested dicts / lists equal, their floats within TOL (NaN equal to NaN)."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=TOL, abs=TOL), where
    else:
        assert got == want, where


def test_evaluate_gives_hfs_numbers(tmp_path, tiny_dataset, tiny_tokenizer):
    hf = _saved(tmp_path / "run" / "latest", "mamba2", tiny_tokenizer, context_len=32)
    cfg = EvalConfig(num_line_tasks=4, num_loss_windows=2, humaneval=False, max_line_tokens=8, num_gain_tasks=6)
    ours = evaluate(str(tmp_path / "run"), tiny_dataset, cfg, progress=False)
    want = evaluate((hf, tiny_tokenizer), tiny_dataset, cfg, progress=False)
    assert ours["loss"]["val_loss"] > 0
    _assert_close({k: v for k, v in ours.items() if k != "checkpoint"},
                  {k: v for k, v in want.items() if k != "checkpoint"})


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_a_directory_hf_saved_resumes_on_ours(tmp_path, tok, arch):
    # training and so a resume run on our model: a run directory written by HF's class (an earlier
    # version of this project) loads into it with its weights, trainable
    _saved(tmp_path / "d", arch, tok)
    model, _ = load_model(tmp_path / "d", trainable=True)
    assert isinstance(model, MambaLM) and model.config.model_type == arch
    assert all(p.requires_grad for p in model.parameters())
