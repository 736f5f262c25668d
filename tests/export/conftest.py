"""Export fixtures: a CLNF fitter with few iterations, its traced fit, synthetic CEN experts, the reference faces."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repository root: the export package

from export.modules import FitGraph, load_fitter, trace
from openface_files import write_cen_file
from reference import boxes, rows
from torch_clnf.fitting import FitConfig
from torch_clnf.images import prepare_images
from torch_clnf.models import CENExperts
from torch_clnf.openface import read_cen

FIT_WINDOWS = (11, 9)      # two of the three scales and one iteration per phase: a short export, still every op


@pytest.fixture(scope="session")
def clnf_fitter(models_dir, tmp_path_factory):
    """OpenFace's CLNF general model, one NU-RLMS iteration per phase."""
    return load_fitter("main_clnf_general.txt", models_dir, FitConfig(iterations=1), tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def fit_graph(clnf_fitter) -> FitGraph:
    return FitGraph(clnf_fitter, FIT_WINDOWS)


@pytest.fixture(scope="session")
def fit_program(fit_graph) -> torch.export.ExportedProgram:
    """The fit traced once, for the ONNX and the Core ML export."""
    return trace(fit_graph)


@pytest.fixture(scope="session")
def cen_experts(tmp_path_factory) -> CENExperts:
    """A small synthetic CEN file (3 views: frontal with mirrored experts, yaw −45°, its mirror +45°)."""
    path = tmp_path_factory.mktemp("cen") / "cen_patches_0.25_of.dat"
    write_cen_file(path, hidden=(24, 12))
    return CENExperts(read_cen(path))


@pytest.fixture(scope="session")
def reference_faces(media_dir, reference_dir, clnf_fitter) -> tuple[torch.Tensor, ...]:
    """sample1–6.jpg padded as the fitter reads them, and start params from their recorded boxes."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    padded = prepare_images([media_dir / r["file_or_frame"] for r in records], margin=2).padded
    params_global = clnf_fitter.pdm.params_from_box(boxes(records))
    params_local = params_global.new_zeros(len(records), clnf_fitter.pdm.num_modes)
    return padded, torch.arange(len(records)), params_global, params_local
