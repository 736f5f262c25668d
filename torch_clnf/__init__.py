"""torch_clnf: OpenFace 2.2 CLNF / CE-CLM facial landmark fitting as batched PyTorch code."""
from .openface import ModelFileError, OpenFaceModel, read_model

__version__ = "0.1.0"
__all__ = ["ModelFileError", "OpenFaceModel", "read_model", "__version__"]
