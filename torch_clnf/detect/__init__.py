"""Detectors and checks around the fit: MTCNN face detection, the CNN detection validator."""
from .mtcnn import MTCNN, Detections, largest, load_mtcnn
from .validator import VALIDATION_BOUNDARY, DetectionValidator, load_validator

__all__ = ["MTCNN", "VALIDATION_BOUNDARY", "DetectionValidator", "Detections", "largest", "load_mtcnn", "load_validator"]
