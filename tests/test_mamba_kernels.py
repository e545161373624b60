"""The CUDA kernels' plumbing in our Mamba-1 (mamba_nb.model.kernels, mamba_nb.model.scan), without CUDA.

mamba-ssm and causal-conv1d are CUDA-only and not installed here. So: the import probe runs on a
stand-in `import_module` (all there, none, the mamba-ssm build without its CUDA extension), and
the kernels path runs on stand-in functions with the kernels' signatures, written in plain
PyTorch, in place of `kernels.loaded()` and of the CUDA check: each must be called where the
kernel would be, with arguments in the kernel's order, and give the fast path's numbers.
"""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from test_mamba_model import rel_err
from tiny_models import hf_mamba

from mamba_nb.model import generate as gen
from mamba_nb.model import hf_format, kernels, scan
from mamba_nb.scan import conv as cut_conv
from mamba_nb.scan import selective as fast

ALL = {name: object() for name in kernels.SOURCES}


def fake_import(present: dict[str, set]):
    """import_module that knows the modules in `present` (module -> the names it has)."""
    def import_module(name):
        if name not in present:
            raise ImportError(f"No module named {name!r}")
        return types.SimpleNamespace(**{n: ALL.get(n, object()) for n in present[name]})
    return import_module


def test_probe_finds_every_kernel_function():
    present = {}
    for name, module in kernels.SOURCES.items():
        present.setdefault(module, set()).add(name)
    found = kernels.probe(fake_import(present))
    assert found.complete and found.why_not == "" and found.selective_scan_fn is ALL["selective_scan_fn"]


def test_probe_without_the_packages_says_how_to_install():
    found = kernels.probe(fake_import({}))
    assert not found.complete and found.selective_scan_fn is None
    assert "5 of 5 kernel functions did not import" in found.why_not and "pip install" in found.why_not


def test_probe_names_the_mamba_ssm_build_without_its_cuda_extension():
    # mamba_ssm imports, its selective_scan_interface does not (no selective_scan_cuda): state-spaces/mamba #977
    present = {"mamba_ssm": set(), "mamba_ssm.ops.triton.selective_state_update": {"selective_state_update"},
               "causal_conv1d": {"causal_conv1d_fn", "causal_conv1d_update"}}
    found = kernels.probe(fake_import(present))
    assert not found.complete and found.why_not == kernels.NO_CUDA_BUILD and "MAMBA_KEEP_CUDA_BUILD=TRUE" in found.why_not


class StandIns:
    """The five kernel functions with the kernels' signatures, in PyTorch; each call is counted."""

    def __init__(self):
        self.calls: dict[str, list] = {name: [] for name in kernels.SOURCES}

    def kernels(self) -> kernels.Kernels:
        return kernels.Kernels(**{name: getattr(self, name) for name in kernels.SOURCES})

    def selective_scan_fn(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        self.calls["selective_scan_fn"].append(delta_softplus)
        return fast.selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                   return_last_state=return_last_state)

    def causal_conv1d_fn(self, x, weight, bias=None, seq_idx=None, activation=None):
        self.calls["causal_conv1d_fn"].append(seq_idx)
        assert activation == "silu"
        if seq_idx is None:
            return F.silu(F.conv1d(x, weight[:, None], bias, padding=weight.shape[1] - 1, groups=x.shape[1])
                          [..., : x.shape[-1]])
        starts = torch.ones_like(seq_idx, dtype=torch.bool)
        starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]  # a new document number: a start
        return cut_conv.causal_conv1d(x, weight, bias, "silu", doc_starts=starts)

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None):
        self.calls["causal_conv1d_update"].append(activation)
        conv_state.copy_(torch.cat([conv_state[..., 1:], x[..., None]], dim=-1))
        return F.silu((conv_state * weight).sum(-1) + (0 if bias is None else bias))

    def selective_state_update(self, state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
        self.calls["selective_state_update"].append(dt_softplus)
        return fast.selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z)

    def mamba_inner_fn(self, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                       out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, delta_softplus=True):
        self.calls["mamba_inner_fn"].append(delta_softplus)
        x, z = xz.chunk(2, dim=1)  # mamba-ssm's mamba_inner_ref, in short
        x = self.causal_conv1d_fn(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")
        R, N = delta_proj_weight.shape[1], A.shape[1]
        dt, B, C = F.linear(x.transpose(1, 2), x_proj_weight).split([R, N, N], dim=-1)
        dt = delta_proj_weight @ dt.transpose(1, 2)
        y = self.selective_scan_fn(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), D, z, delta_bias, delta_softplus)
        return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


@pytest.fixture
def on_fake_gpu(monkeypatch):
    """The stand-ins as `kernels.loaded()`, and every tensor taken to be on CUDA."""
    stand_ins = StandIns()
    monkeypatch.setattr(kernels, "loaded", stand_ins.kernels)
    monkeypatch.setattr(scan, "runs_on_cuda", lambda t: True)
    return stand_ins


@pytest.fixture
def model(tmp_path):
    hf_mamba("mamba", 8).save_pretrained(tmp_path)
    return hf_format.load(tmp_path).eval()


def test_auto_runs_the_kernels_where_they_import_with_the_fast_path_s_numbers(model, on_fake_gpu):
    ids = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(ids)
        want = model.set_scan_path("fast")(ids)
    calls = on_fake_gpu.calls
    assert len(calls["selective_scan_fn"]) == 2 and calls["selective_scan_fn"][0] is True  # one per layer, softplus on
    assert len(calls["causal_conv1d_fn"]) == 2 and calls["causal_conv1d_fn"][0] is None
    assert rel_err(got, want) <= 1e-6


def test_training_takes_the_fused_kernel_and_documents_keep_causal_conv1d_with_seq_idx(model, on_fake_gpu):
    ids = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(1))
    model.train()
    fused = model(ids)
    assert len(on_fake_gpu.calls["mamba_inner_fn"]) == 2
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, [0, 4]] = True
    before = len(on_fake_gpu.calls["selective_scan_fn"])
    packed = model(ids, doc_starts=starts)
    assert len(on_fake_gpu.calls["mamba_inner_fn"]) == 2  # not with document starts: it takes no seq_idx
    assert len(on_fake_gpu.calls["selective_scan_fn"]) == before  # ours scans: selective_scan_fn has no seq_idx
    seq_idx = on_fake_gpu.calls["causal_conv1d_fn"][-1]
    assert seq_idx.dtype == torch.int32 and seq_idx[0].tolist() == [1] * 4 + [2] * 7
    model.set_scan_path("fast")
    assert rel_err(fused, model(ids)) <= 1e-6 and rel_err(packed, model(ids, doc_starts=starts)) <= 1e-6


def test_generation_steps_through_the_update_kernels(model, on_fake_gpu):
    ids = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(2))
    got = gen.generate(model, ids, max_new_tokens=5)
    assert len(on_fake_gpu.calls["causal_conv1d_update"]) == 2 * 4  # 2 layers x 4 steps after the prefill
    assert len(on_fake_gpu.calls["selective_state_update"]) == 2 * 4
    assert torch.equal(got, gen.generate(model.set_scan_path("fast"), ids, max_new_tokens=5))


def test_kernels_path_that_cannot_run_says_why(model, monkeypatch):
    ids = torch.zeros(1, 3, dtype=torch.long)
    monkeypatch.setattr(kernels, "loaded", lambda: kernels.probe(fake_import({})))
    with pytest.raises(RuntimeError, match="kernels are not available: 5 of 5"):
        model.set_scan_path("kernels")(ids)
    monkeypatch.setattr(kernels, "loaded", StandIns().kernels)
    with pytest.raises(RuntimeError, match="needs tensors on CUDA, these are on cpu"):
        model(ids)
    assert scan.kernels_for("auto", ids) is None  # auto on CPU: the fast path, no error
