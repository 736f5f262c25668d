"""torch_clnf: OpenFace 2.2 CLNF / CE-CLM facial landmark fitting as batched PyTorch code."""
from .fitting import FitConfig
from .landmark_model import FitResult, LandmarkModel, load_model
from .openface import ModelFileError, OpenFaceModel, read_model

__version__ = "0.1.0"
__all__ = ["FitConfig", "FitResult", "LandmarkModel", "ModelFileError", "OpenFaceModel", "load_model", "read_model",
           "__version__"]
