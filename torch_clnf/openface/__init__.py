"""Readers: OpenFace 2.2 model files → plain tensors and dataclasses (no torch.nn here)."""
from .ccnf import CCNFPatchExperts, read_ccnf
from .cen import CENPatchExperts, read_cen
from .early_termination import EarlyTermination, read_early_termination
from .errors import ModelFileError
from .model import OpenFaceModel, PartModel, read_model
from .mtcnn import MTCNNData, read_mtcnn
from .pdm import PDMData, read_pdm
from .spec import MainSpec, ModelSpec, PartSpec, read_main_spec, read_model_spec
from .validator import DetectionValidatorData, read_validator

__all__ = [
    "CCNFPatchExperts", "CENPatchExperts", "DetectionValidatorData", "EarlyTermination", "MTCNNData", "MainSpec", "ModelFileError", "ModelSpec",
    "OpenFaceModel", "PDMData", "PartModel", "PartSpec", "read_ccnf", "read_cen", "read_early_termination",
    "read_main_spec", "read_model", "read_mtcnn", "read_model_spec", "read_pdm", "read_validator",
]
