"""Which CUDA kernels import: `mamba_ssm`'s and `causal_conv1d`'s public functions, or why not.

`probe()` imports, from their packages' public modules, the five functions our Mamba-1 can use on
CUDA: `selective_scan_fn` and `mamba_inner_fn` (a sequence), `selective_state_update` (one
generated token), `causal_conv1d_fn` and `causal_conv1d_update` (the convolution). It returns them
with one line saying what is missing; `loaded()` is the same, probed once per process. It never
raises: a missing or half-built package only means the PyTorch path runs (`scan.py` decides).

One known trap gets its own line: mamba-ssm's releases after 2.3.2.post1 no longer build the
selective-scan CUDA extension by default (state-spaces/mamba #977), so `mamba_ssm` imports but its
`selective_scan_interface` does not; the fix is `MAMBA_KEEP_CUDA_BUILD=TRUE` at install time.

What this module does not do: decide when the kernels run (tensors on CUDA, `scan.py`), install
anything, or touch HF's modules.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

# public function -> the public module it is imported from
SOURCES = {
    "selective_scan_fn": "mamba_ssm.ops.selective_scan_interface",
    "mamba_inner_fn": "mamba_ssm.ops.selective_scan_interface",
    "selective_state_update": "mamba_ssm.ops.triton.selective_state_update",
    "causal_conv1d_fn": "causal_conv1d",
    "causal_conv1d_update": "causal_conv1d",
}
INSTALL = ("on a CUDA machine: `pip install -e '.[cuda]' --no-build-isolation` "
           "(mamba-ssm and causal-conv1d, see README, GPU)")
NO_CUDA_BUILD = ("mamba-ssm imports but its selective-scan CUDA extension does not (releases after 2.3.2.post1 "
                 "skip it by default, state-spaces/mamba #977): reinstall with `MAMBA_KEEP_CUDA_BUILD=TRUE pip "
                 "install mamba-ssm --no-build-isolation`")


@dataclass(frozen=True)
class Kernels:
    """The kernel functions that imported (None: not available) and, if any is missing, why."""

    selective_scan_fn: Optional[Callable] = None
    mamba_inner_fn: Optional[Callable] = None
    selective_state_update: Optional[Callable] = None
    causal_conv1d_fn: Optional[Callable] = None
    causal_conv1d_update: Optional[Callable] = None
    why_not: str = ""

    @property
    def complete(self) -> bool:
        """All five imported: the kernels path can run."""
        return all(getattr(self, name) is not None for name in SOURCES)


def probe(import_module: Callable = importlib.import_module) -> Kernels:
    """Import each kernel function from its public module; `import_module` is injectable (tests)."""
    found: dict[str, Callable] = {}
    failed: dict[str, str] = {}
    for name, module_name in SOURCES.items():
        try:
            found[name] = getattr(import_module(module_name), name)
        except Exception as err:  # ImportError, a missing CUDA library (OSError), a missing name
            failed[name] = f"{type(err).__name__}: {err}"
    return Kernels(**found, why_not=_why_not(failed, import_module))


def _why_not(failed: dict[str, str], import_module: Callable) -> str:
    if not failed:
        return ""
    if "selective_scan_fn" in failed and _imports(import_module, "mamba_ssm"):
        return NO_CUDA_BUILD
    first = next(iter(failed))
    return f"{len(failed)} of {len(SOURCES)} kernel functions did not import ({first}: {failed[first]}); {INSTALL}"


def _imports(import_module: Callable, name: str) -> bool:
    try:
        import_module(name)
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=1)
def loaded() -> Kernels:
    """`probe()`, once per process."""
    return probe()
