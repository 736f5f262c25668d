"""Constants on a tensor's device and in its dtype, made once per process.

An operation between a tensor and a Python number first wraps the number into a tensor and
converts it, which for the small tensors of a one-face fit costs more than the arithmetic
(about 3 µs of a 4.5 µs addition). The fitting loops use these cached tensors instead; the
values are the same (a number is rounded to the tensor's dtype either way).
"""
from __future__ import annotations

import torch

_cache: dict[tuple, torch.Tensor] = {}


def widest_float(device: torch.device) -> torch.dtype:
    """float64, or float32 on a device without float64 (Apple MPS): for values that should be
    computed as precisely as a Python number is."""
    return torch.float32 if device.type == "mps" else torch.float64


def constant(value: float | torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` (a number, or a module-level tensor) as a tensor on ``like``'s device, in
    ``dtype`` (default ``like``'s): a 0-dim tensor for a number."""
    dtype = dtype or like.dtype
    key = (id(value), like.device, dtype) if isinstance(value, torch.Tensor) else (value, like.device, dtype)
    found = _cache.get(key)
    if found is None:
        found = (value.to(like.device, dtype) if isinstance(value, torch.Tensor)       # (not as_tensor: a number
                 else torch.full((), value, dtype=dtype, device=like.device))          # so made fails in a traced loop)
        if not torch.compiler.is_compiling():        # (a traced tensor is the trace's, not a value to keep)
            _cache[key] = found
    return found
