"""The torch modules that are exported (to ONNX and to Core ML alike), their inputs and dynamic shapes.

Both wrap torch_clnf's own modules and run them inside
:func:`~torch_clnf.models.sync.fixed_iterations`: one static graph, no host reads, every loop
unrolled to its fixed count (faces that converge early are masked, as in the normal path).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from torch_clnf.fitting import FitConfig, ModelFitter
from torch_clnf.fitting.sampling import MARGIN
from torch_clnf.models.sync import fixed_iterations
from torch_clnf.weights import load_weights


def load_fitter(spec: str | Path = "main_clnf_general.txt", models: str | Path | None = None,
                config: FitConfig | None = None, cache: str | Path | None = None,
                dtype: torch.dtype = torch.float32) -> ModelFitter:
    """A CPU :class:`ModelFitter` for an OpenFace main spec, with CE-CLM's parameter changes for a
    CEN model (as :func:`torch_clnf.load_model`), without detector or validator."""
    model = load_weights(spec, models, cache)
    config = config or FitConfig()
    if model.cen:
        config = config.for_ceclm()
    return ModelFitter(model, config, dtype).eval()


def warm_up(graph: nn.Module) -> None:
    """Run a graph once eagerly on its example inputs, so that every constant built on first use
    (CCNF Σ of every view, CEN sparse interpolation, converted rotation tables) exists before
    tracing: built during a trace they would be traced values, not constants."""
    with torch.inference_mode():
        graph(*graph.example_inputs())


def trace(graph: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of an :class:`ExpertGraph` or :class:`FitGraph` with its dynamic sizes
    (after :func:`warm_up`); what both the ONNX and the Core ML export convert."""
    warm_up(graph)
    with torch.no_grad():
        return torch.export.export(graph, graph.example_inputs(), dynamic_shapes=graph.dynamic_shapes(), strict=False)


class ExpertGraph(nn.Module):
    """One scale's patch experts (CCNF or CEN) for all landmarks at one window size.

    ``forward(areas (B, L, win + 10, win + 10) float32, view (B,) int64)`` →
    ``maps (B, L, win, win)`` float32, ``visible (B, L)`` bool.
    """

    inputs = ("areas", "view")
    outputs = ("maps", "visible")

    def __init__(self, experts: nn.Module, window: int) -> None:
        super().__init__()
        self.experts = experts
        self.window = window

    @property
    def area(self) -> int:
        return self.window + self.experts.support[0] - 1

    def forward(self, areas: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with fixed_iterations():
            maps, visible = self.experts(areas, view)
        return maps, visible

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random areas (grey levels 0–255) and views, for tracing and checks."""
        generator = torch.Generator().manual_seed(seed)
        areas = torch.rand(batch, self.experts.num_points, self.area, self.area, generator=generator,
                           dtype=self.experts.view_centers.dtype) * 255
        view = torch.randint(0, self.experts.num_views, (batch,), generator=generator)
        return areas, view

    def dynamic_shapes(self) -> dict:
        """The batch of faces is dynamic (torch.export's ``dynamic_shapes``)."""
        faces = torch.export.Dim("faces", min=1, max=4096)
        return {"areas": {0: faces}, "view": {0: faces}}


class FitGraph(nn.Module):
    """The whole fit of a batch of faces over the main model's scales (no part models).

    ``forward(padded (N, H + 4, W + 4) float32, image_index (B,) int64, params_global (B, 6),
    params_local (B, m))`` → ``landmarks (B, n, 2)`` pixels, the final ``params_global (B, 6)``
    and ``params_local (B, m)``, ``likelihood (B,)``. ``padded`` holds grey images with a zero
    margin of 2 pixels, as ``torch_clnf.images.prepare_images(images, margin=2).padded``; start
    params from ``fitter.pdm.params_from_box(boxes)`` and zeros.

    Args:
        fitter: the main model's fitter; its ``config.iterations`` is the count of every phase.
        window_sizes: per scale (default ``fitter.config.window_sizes``, OpenFace's 11, 9, 7, 5).
    """

    inputs = ("padded", "image_index", "params_global", "params_local")
    outputs = ("landmarks", "params_global_out", "params_local_out", "likelihood")

    def __init__(self, fitter: ModelFitter, window_sizes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.fitter = fitter
        self.window_sizes = tuple(window_sizes or fitter.config.window_sizes)[: len(fitter.experts)]

    def forward(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                params_local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with fixed_iterations():
            state = self.fitter.fit(padded, image_index, params_global, params_local, self.window_sizes, parts=False)
        return state.landmarks, state.params_global, state.params_local, state.likelihood

    def example_inputs(self, images: int = 2, faces: int = 3, size: tuple[int, int] = (160, 200),
                       seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random grey images of (height, width) and ``faces`` boxes in them, for tracing (sizes
        other than 1, and all different, so that a trace keeps them dynamic)."""
        generator = torch.Generator().manual_seed(seed)
        height, width = size
        dtype = self.fitter.pdm.mean_shape.dtype
        padded = torch.zeros(images, height + 2 * MARGIN, width + 2 * MARGIN, dtype=dtype)
        padded[:, MARGIN:-MARGIN, MARGIN:-MARGIN] = torch.rand(images, height, width, generator=generator, dtype=dtype) * 255
        boxes = torch.tensor([[width * 0.25, height * 0.2, width * 0.5, height * 0.6]], dtype=dtype).repeat(faces, 1)
        params_global = self.fitter.pdm.params_from_box(boxes)
        params_local = params_global.new_zeros(faces, self.fitter.pdm.num_modes)
        return padded, torch.arange(faces) % images, params_global, params_local

    def dynamic_shapes(self) -> dict:
        """Dynamic: the number of images and their padded size, and the batch of faces."""
        images, faces = torch.export.Dim("images", min=1, max=4096), torch.export.Dim("faces", min=1, max=4096)
        height, width = torch.export.Dim("height", min=32, max=16384), torch.export.Dim("width", min=32, max=16384)
        return {"padded": {0: images, 1: height, 2: width}, "image_index": {0: faces},
                "params_global": {0: faces}, "params_local": {0: faces}}
