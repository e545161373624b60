"""Resets at document starts (`reset_at_documents`): each document of a packed window is read as if
it were alone.

- the scan (float64, against autograd through a naive per-step loop): outputs, final state and the
  gradient of every input, random document starts;
- the convolution: taps cut at the starts equal convolving each document on its own;
- our micro Mamba-1 (fast and reference scans) and Mamba-2 (float32): the logits of every document of
  a window equal the document run alone (1e-5), and the parameter gradients of a window equal the
  sum over its documents run alone, also with gradient checkpointing (the kernels path's plumbing:
  test_mamba_kernels.py); the Llama peer through its position ids;
- what is refused: HF's Mamba class (it has no reset), starts of another shape;
- where the starts come from: the window's documents followed through FIM (whole documents and
  regions), not the <|endoftext|> that closes each FIM middle; the batch carries them;
- training and validation read windows with the starts when asked.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamba_nb.doc_reset import model_logits
from mamba_nb.fim import MIDDLE, PLAIN, FimTransform, document_starts, make_batch, undo_fim
from mamba_nb.scan import selective_scan
from mamba_nb.scan.conv import causal_conv1d, positions_in_document
from mamba_nb.tokenizer import FimTokens
from tiny_models import tiny_bpe

VOCAB = 64
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def starts_from_lengths(lengths: list[int]) -> torch.Tensor:
    """(1, sum(lengths)) bool: True at the first position of each document."""
    starts = torch.zeros(1, sum(lengths), dtype=torch.bool)
    at = 0
    for n in lengths:
        starts[0, at] = True
        at += n
    return starts


@st.composite
def split_rows(draw, max_len: int = 24, rows: int = 2):
    """`rows` windows of one length, each cut into 1-4 documents at random places."""
    length = draw(st.integers(2, max_len))
    out = []
    for _ in range(rows):
        cuts = sorted(draw(st.sets(st.integers(1, length - 1), max_size=3)))
        bounds = [0, *cuts, length]
        out.append([b - a for a, b in zip(bounds, bounds[1:])])
    return out


def stacked_starts(rows: list[list[int]]) -> torch.Tensor:
    return torch.cat([starts_from_lengths(r) for r in rows])


# --- the scan and the convolution, function level ------------------------------------------------


def naive_scan_with_resets(u, dt, A, B, C, D, z, delta_bias, doc_starts):
    """The recurrence one step at a time (autograd differentiates it), the state zeroed at each start."""
    dt = F.softplus(dt + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[2]):
        keep = (~doc_starts[:, t]).to(u.dtype)[:, None, None]  # (batch, 1, 1)
        h = keep * torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) + u * D[:, None]
    return y * F.silu(z), h


@FAST
@given(rows=split_rows(max_len=40, rows=3), seed=st.integers(0, 2**16))
def test_scan_with_resets_matches_a_naive_loop_values_and_gradients(rows, seed):
    gen = torch.Generator().manual_seed(seed)
    batch, d, n, length = len(rows), 3, 4, sum(rows[0])
    inputs = {
        "u": torch.randn(batch, d, length, generator=gen), "dt": torch.randn(batch, d, length, generator=gen),
        "A": -torch.exp(torch.randn(d, n, generator=gen)), "B": torch.randn(batch, n, length, generator=gen),
        "C": torch.randn(batch, n, length, generator=gen), "D": torch.randn(d, generator=gen),
        "z": torch.randn(batch, d, length, generator=gen), "delta_bias": torch.randn(d, generator=gen) * 0.5,
    }
    doc_starts = stacked_starts(rows)
    grad_out = torch.randn(batch, d, length, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(batch, d, n, generator=gen, dtype=torch.float64)

    def run(fn):
        leaves = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
        out, last = fn(leaves)
        loss = (out * grad_out).sum() + (last * grad_last).sum()
        return out, last, torch.autograd.grad(loss, list(leaves.values()))

    fast = run(lambda x: selective_scan(x["u"], x["dt"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                        delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True,
                                        doc_starts=doc_starts))
    naive = run(lambda x: naive_scan_with_resets(*x.values(), doc_starts))
    assert torch.allclose(fast[0], naive[0], rtol=1e-10, atol=1e-10)
    assert torch.allclose(fast[1], naive[1], rtol=1e-10, atol=1e-10)
    for name, a, b in zip(inputs, fast[2], naive[2]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), name


def test_a_start_at_every_position_leaves_no_memory():
    gen = torch.Generator().manual_seed(0)
    u, dt, B, C = (torch.randn(2, 3, 5, generator=gen) for _ in range(4))
    B, C = B[:, :2], C[:, :2]
    A = -torch.ones(3, 2)
    out = selective_scan(u, dt, A, B, C, delta_softplus=True, doc_starts=torch.ones(2, 5, dtype=torch.bool))
    each = torch.cat([selective_scan(u[..., t:t + 1], dt[..., t:t + 1], A, B[..., t:t + 1], C[..., t:t + 1],
                                     delta_softplus=True) for t in range(5)], -1)
    assert torch.allclose(out, each, atol=1e-6)


@FAST
@given(rows=split_rows(rows=2), width=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_the_convolution_with_resets_is_each_document_convolved_alone(rows, width, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(rows), 3, sum(rows[0]), generator=gen, dtype=torch.float64)
    weight = torch.randn(3, width, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    out = causal_conv1d(x, weight, bias, "silu", doc_starts=stacked_starts(rows))
    for b, lengths in enumerate(rows):
        at = 0
        for n in lengths:
            piece = x[b: b + 1, :, at: at + n]
            alone = F.silu(F.conv1d(piece, weight[:, None], bias, padding=width - 1, groups=3)[..., :n])
            assert torch.allclose(out[b: b + 1, :, at: at + n], alone, atol=1e-12)
            at += n


def test_positions_in_document_count_from_each_start():
    starts = torch.tensor([[True, False, False, True, False], [False, False, True, True, False]])
    assert positions_in_document(starts).tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 1]]


# --- the model ---------------------------------------------------------------------------------


def micro(arch: str = "mamba", scan: str = "fast"):
    """A micro model, eval mode: ours for a Mamba (on `scan`), HF's class for the Llama peer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Mamba2Config, MambaConfig

    from mamba_nb.model.lm import MambaLM

    torch.manual_seed(0)
    if arch == "mamba":
        model = MambaLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8))
    elif arch == "mamba2":
        model = MambaLM(Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
                                     num_heads=4, head_dim=16, n_groups=1, chunk_size=16))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64))
    model.eval()
    if arch != "llama":
        model.set_scan_path(scan)
    return model


def plain_logits(model, ids):
    """The logits of `ids` read as one document."""
    return model_logits(model, ids)


def assert_each_document_as_if_alone(model, rows, seed, tol):
    ids = torch.randint(0, VOCAB, (len(rows), sum(rows[0])), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        together = model_logits(model, ids, stacked_starts(rows))
        for b, lengths in enumerate(rows):
            at = 0
            for n in lengths:
                alone = plain_logits(model, ids[b: b + 1, at: at + n])
                assert (together[b: b + 1, at: at + n] - alone).abs().max() <= tol, (b, at, n)
                at += n


MODELS = [("mamba", "fast"), ("mamba", "reference"), ("mamba2", "fast")]


@pytest.fixture(scope="module", params=MODELS, ids=["-".join(m) for m in MODELS])
def mamba(request):
    return micro(*request.param)


@settings(FAST, max_examples=6)  # each example runs the model up to 9 times
@given(rows=split_rows(rows=2), seed=st.integers(0, 2**16))
def test_every_document_of_a_window_reads_as_if_alone_fp32(mamba, rows, seed):
    assert_each_document_as_if_alone(mamba, rows, seed, tol=1e-5)


def test_without_resets_the_second_document_sees_the_first(mamba):
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = plain_logits(mamba, ids)[:, 8:]
        alone = plain_logits(mamba, ids[:, 8:])
    assert (together - alone).abs().max() > 1e-3


def param_grads(model, ids, doc_starts, weights):
    model.zero_grad(set_to_none=True)
    (model_logits(model, ids, doc_starts) * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_of_a_window_are_the_sum_over_its_documents_alone(arch, checkpointing):
    """The backward through the scan and the cut convolution equals running each document on its own:
    no gradient crosses a start. float32, so norm-wise 1e-5 for rounding; a gradient that crossed
    would be off by order 1."""
    model = micro(arch).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    gen = torch.Generator().manual_seed(2)
    lengths = [7, 1, 12]
    ids = torch.randint(0, VOCAB, (1, sum(lengths)), generator=gen)
    weights = torch.randn(1, sum(lengths), VOCAB, generator=gen)
    together = param_grads(model, ids, starts_from_lengths(lengths), weights)
    expected, at = {}, 0
    for n in lengths:
        for name, g in param_grads(model, ids[:, at: at + n], None, weights[:, at: at + n]).items():
            expected[name] = expected.get(name, 0) + g
        at += n
    assert together.keys() == expected.keys()
    for name in together:
        assert (together[name] - expected[name]).norm() <= 1e-5 * expected[name].norm(), name


def test_the_llama_peer_reads_each_document_alone_through_its_position_ids():
    assert_each_document_as_if_alone(micro("llama"), [[6, 10], [3, 5, 8]], seed=4, tol=1e-5)


def test_hf_s_mamba_class_is_refused_with_starts_not_read_as_one_stream():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, state_size=8))
    with pytest.raises(ValueError, match="'mamba' model of HF's class.*load_model"):
        model_logits(model, torch.zeros(1, 8, dtype=torch.long), starts_from_lengths([3, 5]))


def test_starts_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="doc_starts has shape"):
        model_logits(micro(), torch.zeros(1, 8, dtype=torch.long), starts_from_lengths([3, 6]))


# --- where the starts come from: the window's documents, through FIM ------------------------------

DOCS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\n\nfor name in os.listdir('.'):\n    print(name.upper())\n",
    "x = [i * i for i in range(10) if i % 2]\nprint(sum(x))\n",
    "\n",
]


@pytest.fixture(scope="module")
def tok():
    return tiny_bpe()


@pytest.fixture(scope="module")
def ft(tok):
    return FimTokens.from_tokenizer(tok)


@pytest.fixture(scope="module")
def stream(tok, ft):
    eot = ft.eot
    ids = []
    for k in range(12):
        ids += tok(DOCS[k % len(DOCS)], add_special_tokens=False)["input_ids"] + [eot]
    return np.array(ids, dtype=np.int64), eot


def windows_at(stream, offsets, length):
    return np.stack([stream[o: o + length] for o in offsets])


@FAST
@given(offsets=st.lists(st.integers(0, 120), min_size=1, max_size=3), seed=st.integers(0, 100),
       region_lines=st.sampled_from([1, 2, 4]))
def test_region_fim_starts_are_the_documents_not_the_fim_tokens(tok, ft, stream, offsets, seed, region_lines):
    ids, eot = stream
    windows = windows_at(ids, offsets, 90)
    result = FimTransform(tok, fim_rate=1.0, seed=seed, fim_region_lines=region_lines, line_hole_rate=0.5)(windows)
    for b in range(len(offsets)):
        tokens, roles, starts = result.tokens[b], result.roles[b], result.doc_starts[b]
        assert starts[0]
        # every later start follows a document's own <|endoftext|> (a plain one), and every such one is followed
        # by a start: the <|endoftext|> closing a FIM middle (role MIDDLE) never is
        after_doc_eot = np.zeros_like(starts)
        after_doc_eot[1:] = (tokens[:-1] == eot) & (roles[:-1] == PLAIN)
        assert np.array_equal(starts[1:], after_doc_eot[1:])
        middle_eots = np.flatnonzero((tokens[:-1] == eot) & (roles[:-1] == MIDDLE))
        assert not starts[middle_eots + 1].any()
        # as many documents as the window had, in order, each one's text whole (the last may be cut)
        raw_docs = tok.decode(windows[b].tolist()).split("<|endoftext|>")
        bounds = [*np.flatnonzero(starts), len(tokens)]
        laid = [tokens[s:e] for s, e in zip(bounds, bounds[1:])]
        for k, piece in enumerate(laid[:-1]):  # complete documents (their own <|endoftext|> at the end)
            undone = undo_fim(piece, ft, region_lines)
            assert undone[-1].ended  # the document's own <|endoftext|> closes it
            assert tok.decode(np.concatenate([p.tokens for p in undone]).tolist()) == raw_docs[k], k


@FAST
@given(offsets=st.lists(st.integers(0, 120), min_size=1, max_size=3), seed=st.integers(0, 100),
       fim_rate=st.sampled_from([0.0, 0.5, 1.0]))
def test_whole_document_fim_starts_follow_the_pieces(tok, stream, offsets, seed, fim_rate):
    ids, eot = stream
    windows = windows_at(ids, offsets, 90)
    result = FimTransform(tok, fim_rate=fim_rate, seed=seed)(windows)
    for b in range(len(offsets)):
        starts = np.flatnonzero(result.doc_starts[b])
        assert starts.tolist() == [s for s, _ in result.spans[b] if s < windows.shape[1]]
        assert (result.tokens[b, starts[1:] - 1] == eot).all()  # each after the <|endoftext|> closing a document
    if fim_rate == 0:  # untransformed: the starts are simply the positions after each <|endoftext|>
        assert np.array_equal(result.doc_starts, document_starts(windows, eot))


def test_the_batch_carries_the_starts_of_its_inputs(tok, stream):
    ids, eot = stream
    windows = windows_at(ids, [0, 33], 60)
    result = FimTransform(tok, fim_rate=1.0, fim_region_lines=2)(windows)
    batch = make_batch(result, [0, 33])
    assert batch["doc_starts"].dtype == torch.bool and batch["doc_starts"].shape == batch["input_ids"].shape
    assert np.array_equal(batch["doc_starts"].numpy(), result.doc_starts[:, :-1])


def test_a_result_without_starts_is_refused_by_make_batch():
    from mamba_nb.fim import FimResult

    with pytest.raises(ValueError, match="document_starts"):
        make_batch(FimResult(np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int8)), [0])


# --- training and validation ------------------------------------------------------------------


def test_training_and_validation_read_windows_with_the_starts(tiny_dataset, tmp_path, monkeypatch):
    from mamba_nb import losses, train as train_module
    from mamba_nb.config import TrainConfig

    calls = {"train": [], "validation": []}

    def spy(kind):
        def wrapped(model, input_ids, doc_starts=None):
            calls[kind].append(doc_starts)
            assert doc_starts is not None and doc_starts.shape == input_ids.shape and doc_starts[:, 0].all()
            return model_logits(model, input_ids, doc_starts)
        return wrapped

    monkeypatch.setattr(train_module, "model_logits", spy("train"))
    monkeypatch.setattr(losses, "model_logits", spy("validation"))
    cfg = TrainConfig(dataset=str(tiny_dataset.path), out_dir=str(tmp_path / "run"), preset="micro", context_len=32,
                      batch_size=4, max_steps=2, time_budget_s=None, warmup_steps=1, eval_every=2, eval_windows=4,
                      gain_holes=0, save_every=2, num_workers=0, reset_at_documents=True)
    batches = []
    train_module.train(cfg, on_step=lambda record, model, batch: batches.append(batch))
    assert len(calls["train"]) == 2 and calls["validation"]
    for passed, batch in zip(calls["train"], batches):  # the batch's own starts, not recomputed from its tokens
        assert torch.equal(passed, batch["doc_starts"])
