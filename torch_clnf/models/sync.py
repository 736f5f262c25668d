"""When the host may read values back from the device, and the static-graph mode that reads none."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_static_depth = 0


@contextmanager
def fixed_iterations() -> Iterator[None]:
    """Run the code inside as one static graph, as ``torch.export`` (ONNX, Core ML) needs it.

    Nothing reads tensor values back on the host: loops run their full count with finished
    faces masked (the results of an early exit), faces are not grouped by view on the host
    (each face's view is selected inside the graph), and inputs are not range-checked. Only ops
    that ONNX and Core ML both have are used: small linear systems are solved with elementary
    ops instead of LAPACK, box sums are matmuls instead of unfolds. Results equal the normal
    path's up to float rounding. Outside this context nothing changes.
    """
    global _static_depth
    _static_depth += 1
    try:
        yield
    finally:
        _static_depth -= 1


def static_graph() -> bool:
    """Whether code runs inside :func:`fixed_iterations` (no host reads, export-friendly ops)."""
    return _static_depth > 0


def syncs_cheaply(tensor: torch.Tensor) -> bool:
    """Whether reading a value of ``tensor`` on the host is cheap (CPU), or stalls a GPU queue.

    Early exits (a loop stopping when every face has converged) are taken only where this is
    true; on GPUs the loops run their full count with the finished faces masked, which gives
    the same results. Always false inside :func:`fixed_iterations` and while code is compiled.
    """
    return _static_depth == 0 and tensor.device.type == "cpu" and not torch.compiler.is_compiling()
