"""Detectors and checks around the fit: MTCNN face detection, the CNN detection validator."""
