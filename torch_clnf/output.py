"""Results as OpenFace-style CSV rows and annotated images."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from .landmark_model import FitResult, camera
from .models.rotation import euler_to_matrix


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
    return torch.cat([p.detach().cpu().double() for p in parts], 1).numpy()               # each (B, k)


def write_image_csv(path: str | Path, result: FitResult, names: Sequence[str]) -> None:
    """One row per face: ``file, face_id`` (the face's number within its image), ``faces_found``,
    then OpenFace's columns (see :class:`ImageCSV`)."""
    table = ImageCSV(path, result.landmarks.shape[1], result.params_local.shape[1])
    try:
        for number, name in enumerate(names):
            table.write(name, result.of_image(number))
    finally:
        table.close()


class ImageCSV:
    """Image files' faces as CSV rows, written as each image's faces arrive (flushed per image).

    Columns: ``file``, ``face_id`` (the face's number within its image), ``faces_found`` (how
    many faces the image had, the rows written for it or not), then :func:`openface_columns`. An
    image without a face, or none kept, has one row with ``confidence`` and ``success`` 0 and
    the other fields empty (no ``face_id``, no landmarks), so that "no face" differs from "not
    processed" (no row).
    """

    def __init__(self, path: str | Path, num_points: int = 68, num_modes: int = 34) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.path, "w", newline="")
        self._writer = csv.writer(self._stream)
        self._columns = openface_columns(num_points, num_modes)
        self._writer.writerow(["file", "face_id", "faces_found"] + self._columns)
        self.rows = 0

    def write(self, name: str, faces: FitResult, face_ids: Sequence[int] | torch.Tensor | None = None,
              found: int | None = None) -> None:
        """One row per face of one image (none: the no-face row).

        Args:
            faces: the image's faces to write, in order.
            face_ids: their numbers within the image (default 0, 1, …).
            found: the faces the image had (default ``len(faces)``).
        """
        face_ids = range(len(faces)) if face_ids is None else [int(k) for k in face_ids]
        found = len(faces) if found is None else found
        for face_id, values in zip(face_ids, openface_values(faces)):
            row = [f"{v:.6g}" for v in values]
            row[1] = str(int(values[1]))
            self._writer.writerow([name, face_id, found] + row)
        if not len(faces):
            self._writer.writerow([name, "", found, "0", "0"] + [""] * (len(self._columns) - 2))
        self._stream.flush()
        self.rows += max(1, len(faces))

    def close(self) -> None:
        self._stream.close()


def row_values(result: FitResult | None, columns: int) -> list[str]:
    """One face's :func:`openface_columns` as a CSV row writes them (None: no fit: ``columns`` zeros)."""
    if result is None:
        return ["0"] * columns
    values = [f"{v:.6g}" for v in openface_values(result)[0]]
    values[1] = str(int(bool(result.success[0])))
    return values


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
        self.write_values(frame_index, timestamp, face_id, row_values(result, len(self.columns)))

    def write_values(self, frame_index: int, timestamp: float, face_id: int, values: Sequence[str]) -> None:
        """One row of :func:`row_values` (written elsewhere and kept as text, e.g. by a video's segments)."""
        self._writer.writerow([frame_index + 1, max(face_id, 0), f"{timestamp:.3f}", *values])
        self._stream.flush()
        self.rows += 1

    def close(self) -> None:
        self._stream.close()


def pose_axes(pose: torch.Tensor, width: int, height: int, length: float = 80.0) -> torch.Tensor:
    """Where the heads' axes are in the image: for ``pose`` (B, 6) (OpenFace's ``pose_Tx … pose_Rz``:
    mm and radians), (B, 4, 2) pixels: each head's centre and the ends of its x (towards the face's
    left), y (down) and z (out of the face, towards the camera for a frontal face) axes, ``length``
    mm long, projected with OpenFace's default camera for a ``width`` × ``height`` image."""
    pose = pose.detach().cpu().double()
    f, cx, cy = camera(torch.tensor([[width, height]], dtype=pose.dtype))[0].tolist()
    ends = torch.cat([pose.new_zeros(1, 3), torch.diag(pose.new_tensor([length, length, -length]))])   # head frame, mm
    points = ends @ euler_to_matrix(pose[:, 3:]).transpose(1, 2) + pose[:, None, :3]                 # (B, 4, 3) camera
    return f * points[..., :2] / points[..., 2:] + pose.new_tensor([cx, cy])


def draw_landmarks(image: np.ndarray, result: FitResult, image_number: int, axes: bool = True) -> np.ndarray:
    """A BGR copy of the image with the landmarks of its faces (green: success, red: failed) and,
    with ``axes``, each successful face's head-pose axes (:func:`pose_axes`; x red, y green, z blue)."""
    canvas = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    radius = max(1, round(max(canvas.shape[:2]) / 300))
    faces = result.of_image(image_number)
    for k in range(len(faces)):
        colour = (0, 200, 0) if bool(faces.success[k]) else (0, 0, 255)
        for x, y in faces.landmarks[k].tolist():
            cv2.circle(canvas, (round(x), round(y)), radius, colour, -1, cv2.LINE_AA)
    if axes and len(faces):
        height, width = canvas.shape[:2]
        projected = pose_axes(faces.pose, width, height, length=40.0)
        for k, ends in enumerate(projected.tolist()):
            if not bool(faces.success[k]) or not np.isfinite(ends).all():
                continue
            centre = tuple(round(v) for v in ends[0])
            for end, colour in zip(ends[1:], ((0, 0, 255), (0, 200, 0), (255, 0, 0))):   # BGR: x red, y green, z blue
                cv2.line(canvas, centre, tuple(round(v) for v in end), colour, radius + 1, cv2.LINE_AA)
    return canvas
