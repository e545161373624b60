"""The selective scan's fast CPU path for Mamba-1: the math our mixer (`model/mamba1.py`) runs.

`selective.py` holds the math (`selective_scan`, same inputs/outputs as `mamba_ssm`'s
`selective_scan_fn`; `scan_time_major`, our mixer's layout); `compiled.py` runs its recurrence in a C
kernel (`scan_kernel.c`) on CPU where a C compiler is found; `workspace.py` keeps their big buffers
across steps; `conv.py` the mixer's convolution cut at document starts. Which path runs is chosen in
`model/scan.py`, and nowhere here.
"""
from .selective import selective_scan, selective_state_update

__all__ = ["selective_scan", "selective_state_update"]
