"""Which devices this machine's torch can fit on, and a clear error for one it cannot."""
from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """``cpu``, and ``cuda`` and ``mps`` where this torch build and machine have them."""
    mps = getattr(torch.backends, "mps", None)
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if mps is not None and mps.is_available() else [])


def checked_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device, or a ValueError in one line saying what is available instead."""
    here = ", ".join(available_devices())
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}: expected cpu, cuda or mps (available here: {here})") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no NVIDIA GPU is visible"
        raise ValueError(f"device {str(device)!r}: {why} (available here: {here})")
    if found.type == "cuda" and found.index is not None and found.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if found.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"device {str(device)!r}: Apple's MPS needs a Mac with Apple silicon and macOS 12.3 or later "
                         f"(available here: {here})")
    if found.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r}: torch_clnf runs on cpu, cuda or mps (available here: {here})")
    return found
