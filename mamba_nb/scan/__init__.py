"""The selective scan: a fast CPU path for Mamba-1 and how it plugs into HF models.

`selective.py` holds the math (`selective_scan`, same inputs/outputs as `mamba_ssm`'s
`selective_scan_fn`); `compiled.py` runs its recurrence in a C kernel (`scan_kernel.c`) on CPU
where a C compiler is found; `workspace.py` keeps their big buffers across steps; `conv.py` the
mixer's convolution cut at document starts; `patch.py` chooses a path per model and installs it
(`apply_scan_path`), and carries document starts to the mixers (`reset_states_at`).
"""
from .patch import (SCAN_CHOICES, SUPPORTED_TRANSFORMERS, ScanPathError, apply_scan_path, kernels_available,
                    reset_states_at, scan_path_of)
from .selective import selective_scan, selective_state_update

__all__ = [
    "SCAN_CHOICES", "SUPPORTED_TRANSFORMERS", "ScanPathError", "apply_scan_path", "kernels_available",
    "reset_states_at", "scan_path_of", "selective_scan", "selective_state_update",
]
