"""How the selective-scan path is chosen and plugged into HF's Mamba models, per mixer, in place.

HF `transformers` (>= 5.24, < 6) builds each `MambaMixer.forward` / `Mamba2Mixer.forward` around
a few module-level functions of its modeling file (`mamba_selective_scan`, `mamba_inner_fn`, the
causal-conv1d pair, ...). Each is decided once, at import: the `mamba-ssm`/`causal-conv1d`
kernel when those import, else HF's PyTorch reference. We keep HF's forward (projections, conv,
cache handling, masks: none of it is copied) and swap only those functions, like this:

- each module-level function is replaced, once per process, by a `_Dispatch` that reads a
  context variable and calls one of: HF's original (the kernel when installed), HF's PyTorch
  reference, or ours for Mamba-1: `selective_scan` (a sequence) and `selective_state_update`
  (one cached generation step). With the variable unset (a model this
  module never touched) the original runs, so other models in the process are unaffected;
- each mixer *instance* gets a `forward` attribute that sets the variable to its chosen path
  around HF's own `forward`. Parameters, `state_dict`, `save_pretrained`/`from_pretrained`,
  `.to(device)` and `deepcopy` are untouched; the choice "auto" is resolved at every call from
  the device of the input, so it follows `model.to("cuda")`.

`apply_scan_path` checks the plumbing before it returns: the functions it replaces must exist
with the names it expects, and a one-time probe (a 2-token forward through one mixer) must
actually reach the chosen path. A transformers release that renames or bypasses these internals
therefore fails loudly here (and in tests/test_scan_contract.py) instead of silently falling
back to the slow loop.

Supported: transformers 5.24 (tested). 5.15-5.23 have the same function names but not the same
surroundings (5.15 fails tests/test_scan_contract.py: other cache field, other forward wrapper);
5.0-5.14 have `MambaMixer.slow_forward` instead. Widen SUPPORTED_TRANSFORMERS only after running
the contract tests on the new version.

Mamba-2 has no path of ours: HF's chunked PyTorch scan is already made of matmuls and, on the
course's tiny config, trains at about the same tokens per CPU-second as our Mamba-1 path
(benchmarks/bench_train_cpu.py); a replacement was not attempted. "fast" and "auto" run HF's
chunked scan there and report "hf". What this module does not do: compile anything, install
kernels, or change any weight.
"""
from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
from typing import Callable, Optional

import torch
from torch import nn

from .selective import selective_scan, selective_state_update

SCAN_CHOICES = ("auto", "kernels", "fast", "hf")
SUPPORTED_TRANSFORMERS = ">=5.24,<6"
INSTALL_KERNELS = (
    "the CUDA kernels need `mamba-ssm` and `causal-conv1d`: on a CUDA machine run "
    "`pip install -e '.[cuda]' --no-build-isolation` (see README, GPU)"
)

# The path the mixer now running asked for: None outside a patched mixer's forward.
_ROUTE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("mamba_nb_scan_route", default=None)


class ScanPathError(RuntimeError):
    """The requested scan path cannot run, or transformers' internals are not what we rely on."""


# For each HF modeling module: the functions its mixer calls that we route, and what "fast"
# runs for each (None: HF's PyTorch reference; the fused training entry point's reference
# returns None, which makes HF's forward continue to the unfused, routed calls).
_ROUTED: dict[str, dict[str, Optional[Callable]]] = {
    "transformers.models.mamba.modeling_mamba": {
        "mamba_inner_fn": None,
        "mamba_selective_scan": selective_scan,
        "mamba_selective_state_update": selective_state_update,
        "causal_conv1d_fn": None,
        "causal_conv1d_update": None,
    },
    "transformers.models.mamba2.modeling_mamba2": {
        "mamba2_split_conv1d_scan_combined": None,
        "mamba2_chunk_scan": None,
        "mamba2_selective_state_update": None,
        "causal_conv1d_fn": None,
        "causal_conv1d_update": None,
    },
}
_MIXERS = {
    "transformers.models.mamba.modeling_mamba": "MambaMixer",
    "transformers.models.mamba2.modeling_mamba2": "Mamba2Mixer",
}
# The function whose call proves, in the probe, that a "fast" mixer really runs our scan.
_PROBED = {
    "transformers.models.mamba.modeling_mamba": "mamba_selective_scan",
    "transformers.models.mamba2.modeling_mamba2": "mamba2_chunk_scan",
}
_REFERENCES: dict[str, dict[str, Callable]] = {}
_PROBED_OK: set[tuple[str, str, str]] = set()


class _Dispatch:
    """Stands in for one of HF's module-level kernel-or-PyTorch functions."""

    def __init__(self, module: str, name: str, original: Callable, fast: Optional[Callable]):
        self.module, self.name = module, name
        self.original = original  # HF's own: the kernel if installed, else its PyTorch reference
        self.reference = inspect.unwrap(original)  # HF's PyTorch function under its decorator
        self.fast = fast if fast is not None else self.reference
        self.calls: dict[str, int] = {"kernels": 0, "fast": 0, "hf": 0}
        functools.update_wrapper(self, original)

    def __call__(self, *args, **kwargs):
        route = _ROUTE.get()
        if route is None:
            return self.original(*args, **kwargs)
        self.calls[route] += 1
        if route == "kernels":
            return self.original(*args, **kwargs)
        return (self.fast if route == "fast" else self.reference)(*args, **kwargs)


def _modeling(module_name: str):
    import transformers

    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ScanPathError(
            f"cannot import {module_name} from transformers {transformers.__version__}; mamba_nb supports "
            f"transformers{SUPPORTED_TRANSFORMERS}: `pip install 'transformers{SUPPORTED_TRANSFORMERS}'`"
        ) from err


def _install_dispatch(module_name: str) -> None:
    """Replace the routed functions of one HF modeling module by `_Dispatch`es (once; idempotent)."""
    import transformers

    mod = _modeling(module_name)
    refs = _REFERENCES.setdefault(module_name, {})
    for name, fast in _ROUTED[module_name].items():
        current = getattr(mod, name, None)
        if isinstance(current, _Dispatch):
            continue
        if not callable(current) or not hasattr(current, "__wrapped__"):
            raise ScanPathError(
                f"transformers {transformers.__version__}'s {module_name} has no kernel-or-PyTorch function "
                f"`{name}` (found {current!r}); the scan paths rely on it. mamba_nb supports "
                f"transformers{SUPPORTED_TRANSFORMERS}: `pip install 'transformers{SUPPORTED_TRANSFORMERS}'`, "
                "or update mamba_nb/scan/patch.py for the new internals"
            )
        dispatch = _Dispatch(module_name, name, current, fast)
        refs[name] = dispatch.reference
        setattr(mod, name, dispatch)


@functools.lru_cache(maxsize=None)
def kernels_available() -> bool:
    """True when `mamba_ssm` and `causal_conv1d` (the CUDA kernels HF uses) both import."""
    try:
        importlib.import_module("mamba_ssm")
        importlib.import_module("causal_conv1d")
    except Exception:
        return False
    return True


def _resolve(requested: str, device: torch.device, has_fast: bool) -> str:
    if requested == "auto":
        requested = "kernels" if device.type == "cuda" and kernels_available() else "fast"
    if requested == "fast" and not has_fast:
        return "hf"
    return requested


def _routed_forward(self: nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
    # Installed as an instance attribute, so nn.Module.__call__ finds it before the class's.
    route = _resolve(self._mamba_nb_scan, hidden_states.device, self._mamba_nb_has_fast)
    token = _ROUTE.set(route)
    try:
        return type(self).forward(self, hidden_states, *args, **kwargs)
    finally:
        _ROUTE.reset(token)


def _mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for module_name, class_name in _MIXERS.items():
        cls = getattr(_modeling(module_name), class_name, None)
        if cls is None:
            raise ScanPathError(
                f"{module_name} has no {class_name}; mamba_nb supports transformers{SUPPORTED_TRANSFORMERS}"
            )
        found += [(module_name, m) for m in model.modules() if isinstance(m, cls)]
    return found


def _probe(module_name: str, mixer: nn.Module, route: str) -> None:
    """Run a 2-token forward through one mixer and check it reached the routed function."""
    key = (module_name, type(mixer).__qualname__, route)
    if key in _PROBED_OK:
        return
    param = next(mixer.parameters())
    if param.device.type == "meta":
        return  # nothing to run on; the static checks in _install_dispatch still applied
    dispatch = getattr(importlib.import_module(module_name), _PROBED[module_name])
    before = dict(dispatch.calls)
    x = torch.zeros(1, 2, mixer.hidden_size, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        was_training = mixer.training
        mixer.eval()  # the unfused path: the one that calls the scan even when kernels are present
        try:
            mixer(x)
        finally:
            mixer.train(was_training)
    if dispatch.calls[route] <= before[route]:
        import transformers

        raise ScanPathError(
            f"after patching, {type(mixer).__name__}.forward of transformers {transformers.__version__} did not "
            f"call `{_PROBED[module_name]}` on the {route!r} path; its internals changed. mamba_nb supports "
            f"transformers{SUPPORTED_TRANSFORMERS}: `pip install 'transformers{SUPPORTED_TRANSFORMERS}'`"
        )
    _PROBED_OK.add(key)


def scan_path_of(model: nn.Module) -> str:
    """The path the model's mixers take now, on the device their weights are on."""
    mixers = _mixers(model)
    if not mixers or not all(hasattr(m, "_mamba_nb_scan") for _, m in mixers):
        return "hf"  # untouched HF model on CPU: HF's own fallback (or kernels on CUDA)
    _, mixer = mixers[0]
    return _resolve(mixer._mamba_nb_scan, next(mixer.parameters()).device, mixer._mamba_nb_has_fast)


def apply_scan_path(model: nn.Module, scan: str = "auto") -> str:
    """Install the chosen selective-scan path on an HF Mamba/Mamba2 model in place.

    scan: "auto" (kernels on CUDA when `mamba-ssm` and `causal-conv1d` import, else "fast"),
    "fast" (our PyTorch scan for Mamba-1; HF's chunked scan for Mamba-2, see module docstring),
    "hf" (HF's pure-PyTorch fallback, for comparison), "kernels" (the CUDA kernels, or an error).
    Returns the path that runs now: "kernels" | "fast" | "hf". Re-applying replaces the choice.
    """
    if scan not in SCAN_CHOICES:
        raise ValueError(f"scan={scan!r} is not one of {SCAN_CHOICES}; use 'auto' unless comparing paths")
    mixers = _mixers(model)
    if not mixers:
        raise TypeError(
            f"{type(model).__name__} has no MambaMixer or Mamba2Mixer; apply_scan_path works on HF "
            "MambaForCausalLM / Mamba2ForCausalLM (and their backbones)"
        )
    device = next(mixers[0][1].parameters()).device
    if scan == "kernels":
        if not kernels_available():
            raise ScanPathError(f"scan='kernels' requested but the kernels are not installed; {INSTALL_KERNELS}")
        if device.type != "cuda":
            raise ScanPathError(
                f"scan='kernels' needs the model on CUDA, it is on {device}; `model.to('cuda')` first, "
                "or use scan='fast' on this device"
            )
    for module_name in {name for name, _ in mixers}:
        _install_dispatch(module_name)
    for module_name, mixer in mixers:
        mixer._mamba_nb_scan = scan
        mixer._mamba_nb_has_fast = module_name == "transformers.models.mamba.modeling_mamba"
        mixer.forward = _routed_forward.__get__(mixer)
    for module_name in {name for name, _ in mixers}:
        mixer = next(m for name, m in mixers if name == module_name)
        route = _resolve(scan, device, mixer._mamba_nb_has_fast)
        _probe(module_name, mixer, route)
    return scan_path_of(model)
