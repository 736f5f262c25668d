"""torch_clnf: OpenFace 2.2 CLNF / CE-CLM facial landmark fitting as batched PyTorch code.

The names below are imported on first use, so that ``torch-clnf --help`` and other light uses
do not wait for torch to load.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {"FitConfig": ".fitting", "FitResult": ".landmark_model", "LandmarkModel": ".landmark_model",
          "load_model": ".landmark_model", "ModelFileError": ".openface", "OpenFaceModel": ".openface",
          "read_model": ".openface"}
__all__ = sorted(_WHERE) + ["__version__"]

if TYPE_CHECKING:
    from .fitting import FitConfig
    from .landmark_model import FitResult, LandmarkModel, load_model
    from .openface import ModelFileError, OpenFaceModel, read_model


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
