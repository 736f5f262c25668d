"""The main fit of a batch replayed as one captured GPU graph (``FitConfig(capture=True)``).

On a GPU a one-face fit is some 10,000 kernel launches, each waiting on the host: the batch is
bound by launches, not arithmetic. The static-graph form of the fit
(:func:`~torch_clnf.models.sync.fixed_iterations`: every iteration runs, finished faces masked,
nothing read back on the host) can instead be captured once and replayed: on CUDA it is compiled
with ``torch.compile(mode="reduce-overhead")`` (TorchInductor's fused kernels, replayed as CUDA
graphs). Graphs have fixed shapes, so batches are padded to a bucket — the next power of two —
with copies of their first face, and a graph is made per bucket, image-batch shape and windows.
The part models are refitted afterwards as usual (their CalcParams loop reads its stop flags back).

On other devices the same padded static fit runs uncompiled: the bucketing and padding are what
the tests check on a CPU; the capture itself needs a GPU to be measured.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from ..models.sync import fixed_iterations

if TYPE_CHECKING:
    from .fitter import ModelFitter

# a shape (bucket, image batch, windows) is compiled on this fit of it, not before
COMPILE_AFTER = 2
# compiled graphs kept per model (each holds its CUDA graph's memory); further shapes run uncaptured
MAX_GRAPHS = 16


class MainFit(NamedTuple):
    """What the scales of a fit leave (all (B, ...)): the params, success, likelihood and view."""

    params_global: torch.Tensor
    params_local: torch.Tensor
    success: torch.Tensor
    likelihood: torch.Tensor
    view: torch.Tensor


def bucket(batch: int) -> int:
    """The padded batch size of a captured fit: the next power of two (1, 2, 4, 8, …)."""
    return 1 << max(0, batch - 1).bit_length()


class CapturedFit:
    """:meth:`ModelFitter.main_fit <torch_clnf.fitting.fitter.ModelFitter.main_fit>` in static-graph
    form, compiled for replay on CUDA, batches padded to :func:`bucket` sizes.

    Args:
        fitter: the model's fitter.
    """

    def __init__(self, fitter: "ModelFitter") -> None:
        self.fitter = fitter
        self._graphs: dict[tuple, tuple[Callable[..., MainFit], Callable | None]] = {}
        self._uses: dict[tuple, int] = {}
        self._broken = False
        self._full = False

    def __call__(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                 params_local: torch.Tensor, window_sizes: tuple[int, ...], active: torch.Tensor | None = None) -> MainFit:
        """The scales of the fit of B faces, as :meth:`ModelFitter.main_fit`.

        Args:
            padded: (N, H + 4, W + 4) grey images; image_index: (B,); params_global: (B, 6);
            params_local: (B, m); active: (B,) bool, the faces to fit (default all).
        """
        batch = params_global.shape[0]
        size = bucket(batch)
        if active is None:
            active = torch.ones(batch, dtype=torch.bool, device=params_global.device)
        if size > batch:                                  # padding: inactive copies of the first face
            extra = size - batch
            image_index = torch.cat([image_index, image_index[:1].expand(extra)])
            params_global = torch.cat([params_global, params_global[:1].expand(extra, -1)])
            params_local = torch.cat([params_local, params_local[:1].expand(extra, -1)])
            active = torch.cat([active, active.new_zeros(extra)])
        key = (size, tuple(padded.shape), padded.device, padded.dtype, tuple(window_sizes))
        static_fit, compiled = self._graph(key, window_sizes, padded.device)
        if static_fit is None:                            # not (yet) worth a graph: the normal fit
            return MainFit(*self.fitter.main_fit(padded, image_index[:batch], params_global[:batch],
                                                 params_local[:batch], window_sizes, active[:batch]))
        inputs = (padded, image_index, params_global, params_local, active)
        out = None
        if compiled is not None and not self._broken:
            try:
                out = compiled(*inputs)
            except Exception as err:                      # noqa: BLE001 (any backend failure: run uncaptured)
                self._broken = True
                warnings.warn(f"capturing the fit failed, it runs uncaptured: {type(err).__name__}: {err}",
                              RuntimeWarning, stacklevel=2)
        if out is None:
            out = static_fit(*inputs)
        return MainFit(*(value[:batch].clone() for value in out))        # (a replay overwrites its outputs)

    def _graph(self, key: tuple, window_sizes: tuple[int, ...],
               device: torch.device) -> tuple[Callable[..., MainFit] | None, Callable | None]:
        """The static fit and its compiled form for a shape; (None, None) where the normal fit runs
        instead (a shape seen fewer than :data:`COMPILE_AFTER` times, or beyond :data:`MAX_GRAPHS`).
        Where nothing compiles (the CPU) the padded static fit runs uncompiled, as the tests check."""
        if key in self._graphs:
            return self._graphs[key]
        if not self.compiles(device):
            self._graphs[key] = self._make(window_sizes, device, compile_it=False)
            return self._graphs[key]
        self._uses[key] = self._uses.get(key, 0) + 1
        if self._uses[key] < COMPILE_AFTER:
            return None, None
        if len(self._graphs) >= MAX_GRAPHS:
            if not self._full:
                self._full = True
                warnings.warn(f"captured fits: {MAX_GRAPHS} batch and image shapes are captured already; fits of "
                              "other shapes run uncaptured", RuntimeWarning, stacklevel=3)
            return None, None
        self._graphs[key] = self._make(window_sizes, device, compile_it=True)
        return self._graphs[key]

    @staticmethod
    def compiles(device: torch.device) -> bool:
        """Whether fits on ``device`` are compiled and captured (CUDA)."""
        return device.type == "cuda"

    def _make(self, window_sizes: tuple[int, ...], device: torch.device,
              compile_it: bool) -> tuple[Callable[..., MainFit], Callable | None]:
        """The static fit at these windows, and with ``compile_it`` its compiled form (else None)."""
        fitter = self.fitter

        def static_fit(padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                       params_local: torch.Tensor, active: torch.Tensor) -> MainFit:
            with fixed_iterations():
                return MainFit(*fitter.main_fit(padded, image_index, params_global, params_local, window_sizes, active))

        compiled = torch.compile(static_fit, mode="reduce-overhead", dynamic=False) if compile_it else None
        return static_fit, compiled
