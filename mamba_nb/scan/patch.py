"""How the selective-scan path is chosen and plugged into HF's Mamba models, per mixer, in place.

HF `transformers` (5.24) builds each `MambaMixer.forward` / `Mamba2Mixer.forward` around
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

Supported: transformers 5.24 (tested; `check_transformers_version` refuses any other release with
the one-line fix, and pyproject.toml's range is capped the same). 5.15-5.23 have the same function
names but not the same surroundings (5.15 fails tests/test_scan_contract.py: other cache field, other forward wrapper);
5.0-5.14 have `MambaMixer.slow_forward` instead. Widen SUPPORTED_TRANSFORMERS only after running
the contract tests on the new version.

Resets at document starts (`reset_states_at(doc_starts)`, what `reset_at_documents` trains with,
see `mamba_nb.doc_reset`): a second context variable carries the window's document starts
((batch, L) bool) from the training step into the mixers, so neither HF's model code nor its call
signatures change (HF's MambaBlock passes no extra argument to its mixer). Inside it, a Mamba-1
mixer's sequence functions run with resets: on "fast", our convolution with its taps cut
(`conv.py`) and our scan with the decay zeroed at each start (`selective.py`); on "kernels", the
fused `mamba_inner_fn` is skipped (it takes no `seq_idx`; HF's forward then goes on to the unfused
calls), the convolution runs in `causal-conv1d`'s kernel with its `seq_idx`, and the scan runs in
our PyTorch scan on the GPU, because `mamba-ssm`'s `selective_scan_fn` (released 2.x) takes no
`seq_idx` (only its unmerged varlen branch does); that path cannot run here (no CUDA kernels), its
plumbing is tested against a stand-in. Refused with a `ScanPathError`: "hf" (HF's reference, kept
unchanged to compare against, cannot reset), Mamba-2 (HF's chunked scan has no reset), a forward
with a cache (generation reads one document) and starts whose shape is not the input's. Gradient
checkpointing recomputes blocks in the backward, outside the context: `recompute_contexts` is the
`context_fn` that puts the starts back around the recomputation.

Mamba-2 has no path of ours: HF's chunked PyTorch scan is already made of matmuls and, on the
course's tiny config, trains at about the same tokens per CPU-second as our Mamba-1 path
(benchmarks/bench_train_cpu.py); a replacement was not attempted. "fast" and "auto" run HF's
chunked scan there and report "hf". What this module does not do: compile anything, install
kernels, or change any weight.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
from typing import Callable, Optional

import torch
from torch import nn

from .conv import causal_conv1d, causal_conv1d_kernel
from .selective import selective_scan, selective_state_update

SCAN_CHOICES = ("auto", "kernels", "fast", "hf")
SUPPORTED_TRANSFORMERS = ">=5.24.0,<5.25"
INSTALL_KERNELS = (
    "the CUDA kernels need `mamba-ssm` and `causal-conv1d`: on a CUDA machine run "
    "`pip install -e '.[cuda]' --no-build-isolation` (see README, GPU)"
)

# The path the mixer now running asked for: None outside a patched mixer's forward.
_ROUTE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("mamba_nb_scan_route", default=None)


class _DocStarts:
    """The document starts a forward pass resets at, and how many mixers read them."""

    def __init__(self, doc_starts: torch.Tensor):
        self.doc_starts = doc_starts  # (batch, L) bool
        self.reads = 0


# Set by `reset_states_at` around a model's forward: None outside one (every window one stream).
_DOC_STARTS: contextvars.ContextVar[Optional[_DocStarts]] = contextvars.ContextVar("mamba_nb_doc_starts",
                                                                                    default=None)
MAMBA1 = "transformers.models.mamba.modeling_mamba"


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
        starts = _DOC_STARTS.get()
        if starts is not None and self.module == MAMBA1 and self.name in _RESETTING:
            return _with_resets(self.name, route, starts.doc_starts, args, kwargs)
        if route == "kernels":
            return self.original(*args, **kwargs)
        return (self.fast if route == "fast" else self.reference)(*args, **kwargs)


# Mamba-1's functions that read a whole sequence: inside `reset_states_at` they run `_with_resets`.
_RESETTING = ("mamba_inner_fn", "causal_conv1d_fn", "mamba_selective_scan")


def _with_resets(name: str, route: str, doc_starts: torch.Tensor, args, kwargs):
    """Mamba-1's function `name` with resets at `doc_starts`, on the "fast" or "kernels" route (the
    others are refused by `_check_resets`)."""
    if name == "mamba_inner_fn":
        return None  # the fused kernel takes no seq_idx; None makes HF's forward go on to the unfused calls
    if name == "causal_conv1d_fn":
        conv = causal_conv1d_kernel if route == "kernels" else causal_conv1d
        return conv(*args, doc_starts=doc_starts, **kwargs)
    # ours on both routes: mamba-ssm's selective_scan_fn takes no seq_idx
    return selective_scan(*args, doc_starts=doc_starts, **kwargs)


@contextlib.contextmanager
def reset_states_at(doc_starts: Optional[torch.Tensor]):
    """Within: every patched Mamba-1 mixer starts its scan state and convolution afresh where
    `doc_starts` ((batch, L) bool, on the model's device) is True, as if each document were its own
    sequence. None: no resets (a no-op). Raises ScanPathError when no patched mixer read the starts
    (a model `apply_scan_path` never touched, or not a Mamba-1): they would be ignored silently."""
    if doc_starts is None:
        yield
        return
    starts = _DocStarts(doc_starts)
    token = _DOC_STARTS.set(starts)
    try:
        yield
    finally:
        _DOC_STARTS.reset(token)
    if starts.reads == 0:
        raise ScanPathError(
            "reset_states_at: no Mamba-1 mixer patched by apply_scan_path read the document starts, so nothing "
            "was reset; call mamba_nb.scan.apply_scan_path(model) first (the Llama peer resets through its "
            "position ids instead: mamba_nb.doc_reset.model_logits)"
        )


def recompute_contexts():
    """`context_fn` for torch.utils.checkpoint (non-reentrant): a checkpointed block is recomputed in
    the backward pass, outside `reset_states_at`; this restores the starts of its forward around it."""
    starts = _DOC_STARTS.get()

    @contextlib.contextmanager
    def restored():
        token = _DOC_STARTS.set(starts)
        try:
            yield
        finally:
            _DOC_STARTS.reset(token)

    return contextlib.nullcontext(), restored()


def _check_resets(mixer: nn.Module, route: str, starts: _DocStarts, hidden_states: torch.Tensor, kwargs) -> None:
    """Refuse what cannot reset at document starts (module docstring, "Resets")."""
    if not mixer._mamba_nb_has_fast:
        raise ScanPathError(
            f"resets at document starts (reset_at_documents) are not supported for {type(mixer).__name__} (Mamba-2): "
            "HF's chunked PyTorch scan has no reset; train Mamba-2 with --no-reset-at-documents, or use --arch mamba"
        )
    if route == "hf":
        raise ScanPathError(
            "resets at document starts (reset_at_documents) need scan='fast' or 'kernels'; scan='hf' runs HF's "
            "reference functions unchanged, which cannot reset: pass --scan fast (the same math) or --scan auto"
        )
    if kwargs.get("cache") is not None:
        raise ScanPathError("reset_states_at is for training windows (no cache): generation reads one document, "
                            "call the model outside reset_states_at")
    if tuple(starts.doc_starts.shape) != tuple(hidden_states.shape[:2]):
        raise ScanPathError(f"doc_starts has shape {tuple(starts.doc_starts.shape)} but the model reads (batch, L) = "
                            f"{tuple(hidden_states.shape[:2])}; pass the batch's doc_starts for its input_ids")
    starts.reads += 1


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


def check_transformers_version() -> None:
    """Refuse, before touching it, a transformers release these internals were not tested on."""
    import transformers
    from packaging.specifiers import SpecifierSet

    if transformers.__version__ not in SpecifierSet(SUPPORTED_TRANSFORMERS):
        raise ScanPathError(
            f"transformers {transformers.__version__} is installed, but mamba_nb's scan paths are tested only on "
            f"transformers{SUPPORTED_TRANSFORMERS} (they plug into its modeling module's internals). Fix: "
            f"`pip install 'transformers{SUPPORTED_TRANSFORMERS}'`, or `make setup` in a fresh clone (the lock)"
        )


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
    starts = _DOC_STARTS.get()
    if starts is not None:
        _check_resets(self, route, starts, hidden_states, kwargs)
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
    check_transformers_version()
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
        mixer._mamba_nb_has_fast = module_name == MAMBA1
        mixer.forward = _routed_forward.__get__(mixer)
    for module_name in {name for name, _ in mixers}:
        mixer = next(m for name, m in mixers if name == module_name)
        route = _resolve(scan, device, mixer._mamba_nb_has_fast)
        _probe(module_name, mixer, route)
    return scan_path_of(model)
