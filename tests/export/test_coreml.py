"""Core ML export (coremltools, from the torch program) of the experts and the whole fit.

On any OS: the conversion succeeds and the package's inputs and outputs (names, shapes, dtypes)
read back as expected. On macOS only: the package runs (compute_units=ALL) and matches torch.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

from export.coreml import convert_graph, describe
from export.modules import ExpertGraph
from tolerances import FLOAT32_SPREAD_SHORT_FIT

on_macos = pytest.mark.skipif(sys.platform != "darwin", reason="the Core ML runtime exists only on macOS")


@pytest.fixture(scope="module")
def packages(clnf_fitter, cen_experts, fit_graph, fit_program, tmp_path_factory) -> dict:
    """Graph name → (torch graph, .mlpackage path), converted once for this module."""
    folder = tmp_path_factory.mktemp("coreml")
    cen_experts.sparse = True
    graphs = {"ccnf": ExpertGraph(clnf_fitter.experts[0], 11), "cen": ExpertGraph(cen_experts, 7), "fit": fit_graph}
    return {name: (graph, convert_graph(graph, folder / f"{name}.mlpackage", fit_program if name == "fit" else None))
            for name, graph in graphs.items()}


def test_ccnf_experts_package(packages):
    assert describe(packages["ccnf"][1]) == {
        "inputs": {"areas": ("FLOAT32", (None, 68, 21, 21)), "view": ("INT32", (None,))},
        "outputs": {"maps": ("FLOAT32", (None, 68, 11, 11)), "visible": ("FLOAT32", (None, 68))}}


def test_cen_experts_package(packages):
    assert describe(packages["cen"][1]) == {
        "inputs": {"areas": ("FLOAT32", (None, 68, 17, 17)), "view": ("INT32", (None,))},
        "outputs": {"maps": ("FLOAT32", (None, 68, 7, 7)), "visible": ("FLOAT32", (None, 68))}}


def test_fit_package(packages):
    assert describe(packages["fit"][1]) == {
        "inputs": {"padded": ("FLOAT32", (None, None, None)), "image_index": ("INT32", (None,)),
                   "params_global": ("FLOAT32", (None, 6)), "params_local": ("FLOAT32", (None, 34))},
        "outputs": {"landmarks": ("FLOAT32", (None, 68, 2)), "params_global_out": ("FLOAT32", (None, 6)),
                    "params_local_out": ("FLOAT32", (None, 34)), "likelihood": ("FLOAT32", (None,))}}


def predict(path, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
    feed = {k: v.numpy().astype(np.int32 if v.dtype == torch.long else np.float32) for k, v in inputs.items()}
    return {k: torch.from_numpy(np.asarray(v)) for k, v in model.predict(feed).items()}


@on_macos
@pytest.mark.parametrize("name", ["ccnf", "cen"])
def test_experts_run_like_torch(packages, name):
    graph, path = packages[name]
    areas, view = graph.example_inputs(5, seed=3)
    found = predict(path, {"areas": areas, "view": view})
    with torch.inference_mode():
        expected = graph.experts(areas, view)
    torch.testing.assert_close(found["maps"], expected.maps, atol=1e-3, rtol=0)
    assert torch.equal(found["visible"] > 0.5, expected.visible)


@on_macos
def test_fit_runs_like_torch(packages, reference_faces):
    """Within what float32 rounding alone moves this fit (tests/tolerances.py): Core ML's kernels
    round differently from torch's, and Core ML has no float64 to check it exactly."""
    graph, path = packages["fit"]
    padded, index, params_global, params_local = reference_faces
    found = predict(path, dict(zip(graph.inputs, reference_faces)))
    with torch.inference_mode():
        expected = graph.fitter.fit(padded, index, params_global, params_local, graph.window_sizes, parts=False)
    assert (found["landmarks"] - expected.landmarks).norm(dim=-1).max() < 2 * FLOAT32_SPREAD_SHORT_FIT
