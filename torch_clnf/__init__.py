"""torch_clnf: OpenFace 2.2 CLNF / CE-CLM facial landmark fitting as batched PyTorch code.

The names below are imported on first use, so that ``torch-clnf --help`` and other light uses
do not wait for torch to load.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_attributes

__version__ = "0.1.0"

_WHERE = {"FitConfig": ".fitting", "FitResult": ".landmark_model", "LandmarkModel": ".landmark_model",
          "load_model": ".landmark_model", "ModelFileError": ".openface", "OpenFaceModel": ".openface",
          "read_model": ".openface"}
__all__ = sorted(_WHERE) + ["__version__"]

if TYPE_CHECKING:
    from .fitting import FitConfig
    from .landmark_model import FitResult, LandmarkModel, load_model
    from .openface import ModelFileError, OpenFaceModel, read_model


__getattr__ = lazy_attributes(__name__, _WHERE)
