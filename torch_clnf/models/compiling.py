"""``torch.compile`` for the fitting loops' bodies (``FitConfig(compile=True)``), with an eager fallback.

The functions compiled here read nothing back on the host, so TorchInductor turns each into one
graph of a few fused kernels. A graph is compiled per model, phase, window size and batch size
(a batch size that changes is recompiled once with a dynamic batch): the first fits of a process
take minutes on a small CPU; later processes load the kernels from TorchInductor's disk cache.
Where compilation fails (e.g. no C++ compiler) the functions run eagerly, with one warning.

TorchInductor chooses its vector instructions from ``ATEN_CPU_CAPABILITY`` but (torch 2.13) does not
tell them apart in its disk cache: kernels cached under one setting gave NaN landmarks when loaded
under another. Unless ``TORCHINDUCTOR_CACHE_DIR`` is set, each setting gets a cache folder of its own.
"""
from __future__ import annotations

import os
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

        _cache_per_cpu_capability()

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


def _cache_per_cpu_capability() -> None:
    """TorchInductor's cache folder, one per ``ATEN_CPU_CAPABILITY`` (unless the user chose a folder;
    importing torch._dynamo sets the variable to the default folder, which is not a choice)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default_cache_dir()) != default_cache_dir():
        return
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() or "default"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), f"cpu-{capability}")
