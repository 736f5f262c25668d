"""ONNX export (torch.onnx, dynamo) of the experts and the whole fit, run with onnxruntime against torch."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from export.graphs import default_folder
from export.modules import ExpertGraph, FitGraph, load_fitter
from export.onnx import export_graph, main, run, session
from tolerances import FLOAT32_SPREAD_SHORT_FIT, FLOAT32_SPREAD_SHORT_FIT_MEDIAN
from torch_clnf.fitting import FitConfig
from torch_clnf.weights import cache_dir

pytestmark = pytest.mark.parity


def names(items) -> list[str]:
    return [item.name for item in items]


def check_experts(graph: ExpertGraph, path, views: torch.Tensor) -> None:
    """onnxruntime's maps within 1e-4 of the torch module's normal (grouped by view) path, for 1 and many faces."""
    runtime = session(path)
    assert names(runtime.get_inputs()) == ["areas", "view"] and names(runtime.get_outputs()) == ["maps", "visible"]
    for count in (1, len(views)):
        areas, _ = graph.example_inputs(count, seed=count)
        view = views[:count]
        maps, visible = run(runtime, areas, view)
        with torch.inference_mode():
            expected = graph.experts(areas, view)
        torch.testing.assert_close(maps, expected.maps, atol=1e-4, rtol=0)
        assert torch.equal(visible, expected.visible)


def test_ccnf_experts_match_torch(clnf_fitter, tmp_path):
    graph = ExpertGraph(clnf_fitter.experts[0], 11)
    check_experts(graph, export_graph(graph, tmp_path / "ccnf.onnx"), torch.tensor([0, 3, 1, 0, 6, 4, 2]))


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_cen_experts_match_torch(cen_experts, sparse, tmp_path):
    cen_experts.sparse = sparse
    graph = ExpertGraph(cen_experts, 7)
    check_experts(graph, export_graph(graph, tmp_path / "cen.onnx"), torch.tensor([2, 0, 1, 2, 0]))  # 2: mirrored


def test_fit_matches_torch_on_reference_images(fit_graph, fit_program, reference_faces, tmp_path):
    """The float32 graph in onnxruntime: its names and shapes, and landmarks within what float32
    rounding alone moves this fit (another library's kernels are such a rounding: twice the
    spread of tests/tolerances.py); the exact match is checked in float64 below."""
    path = export_graph(fit_graph, tmp_path / "fit.onnx", fit_program)
    runtime = session(path)
    assert names(runtime.get_inputs()) == ["padded", "image_index", "params_global", "params_local"]
    assert names(runtime.get_outputs()) == ["landmarks", "params_global_out", "params_local_out", "likelihood"]
    padded, index, params_global, params_local = reference_faces
    landmarks, found_global, found_local, likelihood = run(runtime, padded, index, params_global, params_local)
    with torch.inference_mode():                     # the normal torch path: early exits, faces grouped by view
        expected = fit_graph.fitter.fit(padded, index, params_global, params_local, fit_graph.window_sizes, parts=False)
    assert landmarks.shape == (6, 68, 2) and found_global.shape == (6, 6) and found_local.shape == (6, 34)
    d = (landmarks - expected.landmarks).norm(dim=-1)
    assert (d.amax(1) < 2 * FLOAT32_SPREAD_SHORT_FIT).all(), d.amax(1)
    assert (d.median(1).values < 2 * FLOAT32_SPREAD_SHORT_FIT_MEDIAN).all(), d.median(1).values
    torch.testing.assert_close(likelihood, expected.likelihood, atol=1e-3, rtol=0)
    alone = run(runtime, padded[2:3], torch.zeros(1, dtype=torch.long), params_global[2:3], params_local[2:3])[0]
    assert (alone[0] - expected.landmarks[2]).norm(dim=-1).max() < 2 * FLOAT32_SPREAD_SHORT_FIT


@pytest.mark.slow
def test_float64_whole_fit_matches_torch_on_every_reference_image(models_dir, reference_faces, tmp_path):
    """OpenFace's whole default fit (windows 11, 9, 7; 5 iterations per phase), exported in float64:
    onnxruntime's landmarks within 0.01 px of torch's normal float64 path on all six images, on
    every CPU (in float64 rounding does not reach the fit's discontinuities: tests/tolerances.py)."""
    fitter = load_fitter("main_clnf_general.txt", models_dir, FitConfig(), tmp_path / "cache", torch.float64)
    graph = FitGraph(fitter, (11, 9, 7))
    runtime = session(export_graph(graph, tmp_path / "fit64.onnx"))
    padded, index, params_global, params_local = (x.double() if x.is_floating_point() else x for x in reference_faces)
    landmarks = run(runtime, padded, index, params_global, params_local)[0]
    with torch.inference_mode():
        expected = fitter.fit(padded, index, params_global, params_local, graph.window_sizes, parts=False)
    assert landmarks.dtype == torch.float64
    assert (landmarks - expected.landmarks).norm(dim=-1).max() < 0.01


def test_command_writes_where_asked(models_dir, tmp_path, capsys):
    assert default_folder() == cache_dir() / "export"          # a checkout's ignored weights/, or the user cache
    assert main(["--models", str(models_dir), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
                 "--what", "experts", "--windows", "0", "0", "7"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["main_clnf_general_experts_0.5_w7.onnx"]
    assert "maps" in capsys.readouterr().out
    assert main(["--models", str(models_dir), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out64"),
                 "--what", "experts", "--windows", "0", "0", "7", "--dtype", "float64"]) == 0
    assert [p.name for p in (tmp_path / "out64").iterdir()] == ["main_clnf_general_f64_experts_0.5_w7.onnx"]
