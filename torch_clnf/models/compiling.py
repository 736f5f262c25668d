"""``torch.compile`` for the fitting loops' bodies (``FitConfig(compile=True)``), with an eager fallback.

The functions compiled here read nothing back on the host, so TorchInductor turns each into one
graph of a few fused kernels. A graph is compiled per model, phase, window size and batch size
(a batch size that changes is recompiled once with a dynamic batch): the first fits of a process
take minutes on a small CPU; later processes load the kernels from TorchInductor's disk cache.
Where compilation fails (e.g. no C++ compiler) the functions run eagerly, with one warning.
"""
from __future__ import annotations

import warnings
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)

# variants compiled from one function: models (68, 51, 28 points) × phases × windows × batch
# sizes; dynamo's default of 8 would run the rest eagerly
RECOMPILE_LIMIT = 256

_compiled: dict[Callable, Callable] = {}
_broken = False


def compiled_function(function: F) -> F:
    """``function`` compiled (once, on first use), or ``function`` itself for good after a
    compilation error anywhere."""
    if function not in _compiled:
        import torch._dynamo

        dynamo = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), RECOMPILE_LIMIT))
        graph = torch.compile(function, dynamic=None)

        def guarded(*args, **kwargs):
            global _broken
            if not _broken:
                try:
                    return graph(*args, **kwargs)
                except Exception as err:               # noqa: BLE001 (any backend failure: run eagerly)
                    _broken = True
                    warnings.warn(f"torch.compile failed, the fit runs uncompiled: {type(err).__name__}: {err}",
                                  RuntimeWarning, stacklevel=2)
            return function(*args, **kwargs)

        _compiled[function] = guarded
    return _compiled[function]
