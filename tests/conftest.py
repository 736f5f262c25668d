"""Shared fixtures: OpenFace data from ../shared (fail under CI=true when missing), devices, dtypes."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # the test helpers (openface_files.py)

SHARED = TESTS.parent.parent / "shared"
MODELS = Path(os.environ.get("TORCH_CLNF_TEST_MODELS", SHARED / "openface-models"))
MEDIA = SHARED / "media"
REFERENCE = SHARED / "reference"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])


def require(path: Path) -> Path:
    """The path, or a skip — a failure under CI=true, where the shared data must be present."""
    if path.exists():
        return path
    message = f"{path} is missing (tests read OpenFace's files from ../shared beside the checkout)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return require(MODELS)


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return require(MEDIA)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require(REFERENCE)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    if request.param == torch.float64 and DEVICES != ["cpu"] and request.node.callspec.params.get("device") == "mps":
        pytest.skip("MPS has no float64")
    return request.param
