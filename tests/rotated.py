"""Images turned in the plane, and points mapped with them: tilted faces the sample media lack."""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch


def rotated(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned by ``degrees`` (counter-clockwise as shown, OpenCV's sense) about its
    centre, on a canvas that holds all of it (black corners): the turned image and the (2, 3)
    affine map of pixel coordinates (0-based, x right, y down) into it."""
    height, width = image.shape[:2]
    turn = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    cos, sin = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    new_width, new_height = math.ceil(width * cos + height * sin), math.ceil(width * sin + height * cos)
    turn[:, 2] += [(new_width - width) / 2, (new_height - height) / 2]
    return cv2.warpAffine(image, turn, (new_width, new_height), flags=cv2.INTER_LINEAR), turn


def mapped(points: torch.Tensor, turn: np.ndarray) -> torch.Tensor:
    """(..., 2) pixel points mapped by a (2, 3) affine map."""
    matrix = torch.as_tensor(turn, dtype=points.dtype, device=points.device)
    return points @ matrix[:, :2].T + matrix[:, 2]
