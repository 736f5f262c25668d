"""Results as OpenFace-style CSV rows and annotated images."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from .landmark_model import FitResult


def openface_columns(num_points: int = 68, num_modes: int = 34) -> list[str]:
    """OpenFace FeatureExtraction's column names for what torch_clnf produces (after the id columns)."""
    columns = ["confidence", "success", "pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    columns += [f"{axis}_{i}" for axis in ("x", "y") for i in range(num_points)]
    columns += [f"{axis}_{i}" for axis in ("X", "Y", "Z") for i in range(num_points)]
    columns += ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(num_modes)]
    return columns


def openface_values(result: FitResult) -> np.ndarray:
    """(B, C) the values of :func:`openface_columns`, float64."""
    r = result
    parts = [r.confidence[:, None], r.success[:, None], r.pose, r.landmarks[..., 0], r.landmarks[..., 1],
             r.landmarks_3d[..., 0], r.landmarks_3d[..., 1], r.landmarks_3d[..., 2], r.params_global, r.params_local]
    return torch.cat([p.detach().cpu().double().reshape(len(r), -1) for p in parts], 1).numpy()


def write_image_csv(path: str | Path, result: FitResult, names: Sequence[str]) -> None:
    """One row per face: ``file, face_id`` (the face's number within its image), then OpenFace's columns."""
    columns = openface_columns(result.landmarks.shape[1], result.params_local.shape[1])
    values = openface_values(result)
    counts: dict[int, int] = {}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "face_id"] + columns)
        for k, image in enumerate(result.image_index.tolist()):
            face_id = counts.get(image, 0)
            counts[image] = face_id + 1
            row = [f"{v:.6g}" for v in values[k]]
            row[1] = str(int(values[k][1]))
            writer.writerow([names[image], face_id] + row)


class VideoCSV:
    """One video's OpenFace-style CSV, written row by row as frames finish (each row flushed).

    Columns: ``frame`` (1-based, as OpenFace), ``face_id``, ``timestamp`` (seconds), then
    :func:`openface_columns`. A frame without a fit gets ``success = 0`` and zeros.
    """

    def __init__(self, path: str | Path, num_points: int = 68, num_modes: int = 34) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = openface_columns(num_points, num_modes)
        self._stream = open(self.path, "w", newline="")
        self._writer = csv.writer(self._stream)
        self._writer.writerow(["frame", "face_id", "timestamp"] + self.columns)
        self.rows = 0

    def write(self, frame_index: int, timestamp: float, face_id: int, result: FitResult | None) -> None:
        """One row for 0-based ``frame_index``; ``result`` is one face (None: no fit, success 0)."""
        if result is None:
            values = ["0"] * len(self.columns)
        else:
            values = [f"{v:.6g}" for v in openface_values(result)[0]]
            values[1] = str(int(bool(result.success[0])))
        self._writer.writerow([frame_index + 1, max(face_id, 0), f"{timestamp:.3f}"] + values)
        self._stream.flush()
        self.rows += 1

    def close(self) -> None:
        self._stream.close()


def draw_landmarks(image: np.ndarray, result: FitResult, image_number: int) -> np.ndarray:
    """A BGR copy of the image with the landmarks of its faces (green: success, red: failed)."""
    canvas = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    radius = max(1, round(max(canvas.shape[:2]) / 300))
    for k in (result.image_index == image_number).nonzero().flatten().tolist():
        colour = (0, 200, 0) if bool(result.success[k]) else (0, 0, 255)
        for x, y in result.landmarks[k].tolist():
            cv2.circle(canvas, (round(x), round(y)), radius, colour, -1, cv2.LINE_AA)
    return canvas
