"""`apply_scan_path`, and the transformers internals it relies on.

If a transformers upgrade renames, re-signs or bypasses what `mamba_nb/scan/patch.py` hooks into,
the tests here fail with the name of the thing that moved — the fast path can never silently
fall back to HF's O(L^2) loop.
"""
from __future__ import annotations

import copy
import inspect

import pytest
import torch
import transformers
from packaging.specifiers import SpecifierSet
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM
from transformers.models.mamba import modeling_mamba
from transformers.models.mamba2 import modeling_mamba2

from mamba_nb.scan import SUPPORTED_TRANSFORMERS, ScanPathError, apply_scan_path, kernels_available, scan_path_of
from mamba_nb.scan import patch


def tiny(arch: str):
    torch.manual_seed(0)
    if arch == "mamba":
        return MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, state_size=4))
    return Mamba2ForCausalLM(Mamba2Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, state_size=8,
                                          num_heads=4, head_dim=8, n_groups=1, chunk_size=8))


IDS = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(0))


# --- the internals we rely on --------------------------------------------------------------


def test_installed_transformers_is_in_the_supported_range():
    assert transformers.__version__ in SpecifierSet(SUPPORTED_TRANSFORMERS), (
        f"transformers {transformers.__version__} is outside {SUPPORTED_TRANSFORMERS}: re-check the contract "
        "below and update mamba_nb/scan/patch.py before widening the range"
    )


def test_an_untested_transformers_is_refused_with_the_tested_range_and_the_fix(monkeypatch):
    """The check reads `transformers.__version__` at call time: a stand-in module in sys.modules plays a
    release that is not in the range (transformers itself is not touched)."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(__version__="5.25.0"))
    with pytest.raises(ScanPathError) as err:
        patch.check_transformers_version()
    message = str(err.value)
    assert "transformers 5.25.0" in message and f"transformers{SUPPORTED_TRANSFORMERS}" in message
    assert f"pip install 'transformers{SUPPORTED_TRANSFORMERS}'" in message


def test_the_declared_range_is_the_tested_range():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = next(r for r in project["dependencies"] if r.startswith("transformers"))
    assert SpecifierSet(declared.removeprefix("transformers")) == SpecifierSet(SUPPORTED_TRANSFORMERS)


@pytest.mark.parametrize("module, mixer", [(modeling_mamba, "MambaMixer"), (modeling_mamba2, "Mamba2Mixer")])
def test_routed_functions_exist_and_unwrap_to_pytorch(module, mixer):
    routed = patch._ROUTED[module.__name__]
    for name in routed:
        fn = getattr(module, name, None)
        assert callable(fn), f"{module.__name__}.{name} is gone"
        assert hasattr(fn, "__wrapped__"), f"{module.__name__}.{name} is no longer HF's kernel-or-PyTorch wrapper"
        assert inspect.unwrap(fn).__module__ == module.__name__, f"{name} does not unwrap to HF's PyTorch function"
    # the mixer's forward must look the functions up by these global names at call time
    source = inspect.getsource(getattr(module, mixer).forward)
    for name in routed:
        assert f"{name}(" in source, f"{mixer}.forward no longer calls {name}"


def test_mamba1_scan_signature_is_the_one_selective_scan_mirrors():
    params = list(inspect.signature(inspect.unwrap(modeling_mamba.mamba_selective_scan)).parameters)
    assert params[:10] == ["hidden_states", "dt", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
                           "return_last_state"]


@pytest.mark.parametrize("cls", [modeling_mamba.MambaMixer, modeling_mamba2.Mamba2Mixer])
def test_mixer_forward_signature_and_submodules(cls):
    params = list(inspect.signature(inspect.unwrap(cls.forward)).parameters)
    assert params[:2] == ["self", "hidden_states"], params
    mixer = next(m for m in tiny("mamba" if cls is modeling_mamba.MambaMixer else "mamba2").modules()
                 if isinstance(m, cls))
    for attr in ("in_proj", "conv1d", "A_log", "D", "out_proj", "act", "hidden_size", "layer_idx"):
        assert hasattr(mixer, attr), f"{cls.__name__} has no {attr}"
    if cls is modeling_mamba.MambaMixer:
        for attr in ("x_proj", "dt_proj", "time_step_rank", "ssm_state_size"):
            assert hasattr(mixer, attr), f"MambaMixer has no {attr}"


def test_fast_training_forward_and_backward_run_our_scan_not_hfs_loop(monkeypatch):
    model = tiny("mamba").train()
    apply_scan_path(model, "fast")
    dispatch = modeling_mamba.mamba_selective_scan
    assert isinstance(dispatch, patch._Dispatch)
    calls = {"ours": 0, "hf": 0}

    def counting(key, fn):
        def counted(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(dispatch, "fast", counting("ours", dispatch.fast))
    monkeypatch.setattr(dispatch, "reference", counting("hf", dispatch.reference))
    model(IDS).logits.sum().backward()
    assert calls == {"ours": 2, "hf": 0}  # one scan per layer, none on HF's loop


# --- failing loudly when the internals move -------------------------------------------------


def test_a_renamed_hf_function_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(modeling_mamba, "mamba_selective_scan", lambda *a, **k: None)  # no __wrapped__
    with pytest.raises(ScanPathError, match="mamba_selective_scan.*supports transformers"):
        apply_scan_path(tiny("mamba"), "fast")


def test_a_forward_that_bypasses_the_scan_is_a_clear_error(monkeypatch):
    def forward_without_scan(self, hidden_states, *args, **kwargs):
        return self.out_proj(self.in_proj(hidden_states)[..., : self.intermediate_size])

    monkeypatch.setattr(modeling_mamba.MambaMixer, "forward", forward_without_scan)
    monkeypatch.setattr(patch, "_PROBED_OK", set())
    with pytest.raises(ScanPathError, match="did not call `mamba_selective_scan`"):
        apply_scan_path(tiny("mamba"), "fast")


# --- apply_scan_path's own contract ----------------------------------------------------------


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_paths_reported_and_outputs_agree(arch):
    model = tiny(arch).eval()
    with torch.no_grad():
        untouched = model(IDS).logits
    expected = {"auto": "fast", "fast": "fast", "hf": "hf"} if arch == "mamba" else {"auto": "hf", "fast": "hf", "hf": "hf"}
    for scan, path in expected.items():
        assert apply_scan_path(model, scan) == path
        assert scan_path_of(model) == path
        with torch.no_grad():
            torch.testing.assert_close(model(IDS).logits, untouched, rtol=1e-4, atol=1e-5)


def test_reapplying_is_idempotent_and_survives_to_and_deepcopy():
    model = tiny("mamba")
    apply_scan_path(model, "fast")
    dispatch = modeling_mamba.mamba_selective_scan
    assert apply_scan_path(model, "fast") == "fast"
    assert modeling_mamba.mamba_selective_scan is dispatch  # never wrapped twice
    assert inspect.unwrap(dispatch) is patch._REFERENCES[modeling_mamba.__name__]["mamba_selective_scan"]
    model.to(torch.float64).to("cpu")
    assert scan_path_of(model) == "fast"
    twin = copy.deepcopy(model)
    before = dispatch.calls["fast"]
    with torch.no_grad():
        twin(IDS)
    assert dispatch.calls["fast"] == before + 2
    mixer = twin.backbone.layers[0].mixer
    assert mixer.forward.__self__ is mixer  # the copy's forward is bound to the copy


def test_save_and_load_are_plain_hf(tmp_path):
    model = tiny("mamba")
    apply_scan_path(model, "fast")
    model.save_pretrained(tmp_path)
    loaded = MambaForCausalLM.from_pretrained(tmp_path)
    assert scan_path_of(loaded) == "hf"  # nothing of ours is saved...
    assert set(loaded.state_dict()) == set(tiny("mamba").state_dict())
    apply_scan_path(loaded, "fast")  # ...and it patches like any model
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(IDS).logits, model.eval()(IDS).logits)


def test_an_untouched_model_in_the_same_process_keeps_hfs_path():
    apply_scan_path(tiny("mamba"), "fast")  # installs the dispatch
    dispatch = modeling_mamba.mamba_selective_scan
    before = dict(dispatch.calls)
    with torch.no_grad():
        tiny("mamba")(IDS)
    assert dispatch.calls == before  # the call went straight to HF's original


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match="'fastest'.*'auto'"):
        apply_scan_path(tiny("mamba"), "fastest")
    with pytest.raises(TypeError, match="no MambaMixer"):
        apply_scan_path(torch.nn.Linear(2, 2), "auto")
    if not kernels_available():
        with pytest.raises(ScanPathError, match=r"pip install -e '\.\[cuda\]' --no-build-isolation"):
            apply_scan_path(tiny("mamba"), "kernels")
    else:  # kernels installed: on a CPU model they still cannot run
        with pytest.raises(ScanPathError, match="needs the model on CUDA"):
            apply_scan_path(tiny("mamba"), "kernels")
