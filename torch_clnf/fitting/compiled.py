"""NU-RLMS iterations compiled with ``torch.compile`` (``FitConfig(compile=True)``).

One iteration (:func:`~torch_clnf.fitting.rlms.iteration`) reads nothing back on the host, so
TorchInductor compiles it into a few fused kernels; the loop and its early exit stay in Python.
A graph is compiled per model, phase, window size and batch size (a batch size that changes
once is recompiled with a dynamic batch): the first fits of a process take minutes on a small
CPU, later processes load the compiled code from TorchInductor's on-disk cache. Where
compilation fails (e.g. no C++ compiler) the iterations run eagerly, with a warning.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from .rlms import iterations_unrolled

# the variants compiled from one function: models (68, 51, 28 points) × rigid or not × windows ×
# batch sizes; dynamo's default of 8 would run the rest eagerly
RECOMPILE_LIMIT = 256

_compiled: Callable | None = None
_broken = False


def compiled_iterations() -> Callable:
    """:func:`~torch_clnf.fitting.rlms.iterations_unrolled` compiled (made on first use), falling
    back to it for good after a compilation error."""
    global _compiled
    if _compiled is None:
        import torch._dynamo

        dynamo = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), RECOMPILE_LIMIT))
        _compiled = torch.compile(iterations_unrolled, dynamic=None)
    return _guarded


def _guarded(*args, **kwargs):
    global _broken
    if not _broken:
        try:
            return _compiled(*args, **kwargs)
        except Exception as err:                       # noqa: BLE001 (any backend failure: run eagerly)
            _broken = True
            warnings.warn(f"torch.compile failed, NU-RLMS runs uncompiled: {type(err).__name__}: {err}",
                          RuntimeWarning, stacklevel=2)
    return iterations_unrolled(*args, **kwargs)
