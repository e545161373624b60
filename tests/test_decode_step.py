"""Generation's one-token step of a whole Mamba-1 block in the C kernel (mamba_nb/scan/decode_step.py)
against the PyTorch step it replaces (`Block.step` with the kernel turned off):

- property-based: random block shapes (state, conv taps, step rank, biases on and off, norm eps),
  batch sizes, and several steps in a row: the block's output, its conv window and its scan state
  equal the PyTorch step's (float32, relative 1e-5), with rows split over threads or not;
- where it must not run it does not: a LoRA-wrapped projection (its adapters would be skipped),
  float64, the kernel turned off, a wanted gradient, the reference scan path.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import MambaConfig

from mamba_nb.model import generate as gen
from mamba_nb.model.lm import MambaLM
from mamba_nb.scan import compiled, decode_step

if not compiled.available():
    if os.environ.get("MAMBA_NB_REQUIRE_SCAN_KERNEL") == "1":
        raise RuntimeError(f"MAMBA_NB_REQUIRE_SCAN_KERNEL=1 but the scan kernel is unavailable: {compiled.why_not()}")
    pytest.skip(f"no scan kernel here: {compiled.why_not()}", allow_module_level=True)

TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def model(seed: int, hidden: int = 16, state: int = 4, kernel: int = 4, rank: int = 2, bias: bool = False,
          conv_bias: bool = True, eps: float = 1e-5) -> MambaLM:
    torch.manual_seed(seed)
    config = MambaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=2 * hidden, state_size=state,
                         num_hidden_layers=2, conv_kernel=kernel, time_step_rank=rank, use_bias=bias,
                         use_conv_bias=conv_bias, layer_norm_epsilon=eps)
    m = MambaLM(config).eval()
    with torch.no_grad():  # weights away from their init (D = 1, zero biases), so every term counts
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), hidden=st.integers(1, 24), state=st.integers(1, 9), kernel=st.integers(1, 5),
       rank=st.integers(1, 5), bias=st.booleans(), conv_bias=st.booleans(), eps=st.sampled_from([1e-5, 1e-3]),
       batch=st.integers(1, 5), threads=st.sampled_from([1, 2]), steps=st.integers(1, 4))
def test_the_kernel_step_is_the_pytorch_step(seed, hidden, state, kernel, rank, bias, conv_bias, eps, batch,
                                             threads, steps):
    m = model(seed, hidden, state, kernel, rank, bias, conv_bias, eps)
    block = m.backbone.layers[0]
    g = torch.Generator().manual_seed(seed)
    ours, want = gen.DecodeState.empty(m, batch).layers[0], gen.DecodeState.empty(m, batch).layers[0]
    for t in (ours.conv, ours.ssm):  # a state as a prompt leaves it
        t.copy_(torch.randn(t.shape, generator=g))
    want.conv.copy_(ours.conv), want.ssm.copy_(ours.ssm)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(steps):
                h = torch.randn(batch, hidden, generator=g)
                got = decode_step.block_step(block, h, ours)
                with compiled.turned_off():
                    expected = block.step(h, want)
                assert got is not None and got.shape == expected.shape
                assert rel(got, expected) <= TOL
                assert rel(ours.conv, want.conv) <= TOL and rel(ours.ssm, want.ssm) <= TOL
    finally:
        torch.set_num_threads(before)


def test_generation_takes_it_and_gives_the_same_tokens():
    m = model(0)
    ids = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(1))
    fast = gen.generate(m, ids, max_new_tokens=12)
    with compiled.turned_off():
        slow = gen.generate(m, ids, max_new_tokens=12)
    assert torch.equal(fast, slow)
    _, state = gen.prefill(m, ids)
    with torch.inference_mode():
        assert decode_step.block_step(m.backbone.layers[0], torch.zeros(3, 16), state.layers[0]) is not None


def test_it_steps_aside_where_it_must_not_run():
    m = model(0)
    block = m.backbone.layers[0]
    h = torch.randn(2, 16)

    def fresh():  # a state of its own for each case: the C step's weights are looked up once per state
        return gen.DecodeState.empty(m, 2).layers[0]

    with torch.inference_mode():
        state = fresh()
        assert decode_step.block_step(block, h, state) is not None
        with compiled.turned_off():  # also for a state that took the kernel before
            assert decode_step.block_step(block, h, state) is None
        assert decode_step.block_step(block, h.double(), fresh()) is None  # float64: the PyTorch step
        m.set_scan_path("reference")
        assert decode_step.block_step(block, h, fresh()) is None
        m.set_scan_path("auto")
    with torch.enable_grad():  # a graph wanted through the weights: the kernel has no backward
        assert decode_step.block_step(block, h, fresh()) is None
        assert decode_step.block_step(block, h, state) is None


def test_a_lora_wrapped_block_keeps_the_pytorch_step():
    peft = pytest.importorskip("peft")
    m = peft.get_peft_model(copy.deepcopy(model(0)), peft.LoraConfig(r=2, target_modules=["in_proj", "x_proj"],
                                                                     init_lora_weights=False))
    block = m.get_base_model().backbone.layers[0]
    state = gen.DecodeState.empty(m.get_base_model(), 1).layers[0]
    with torch.inference_mode():
        assert decode_step.block_step(block, torch.randn(1, 16), state) is None
