"""Reader for OpenFace point distribution model files (``pdms/*.txt``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .text import TextReader


@dataclass
class PDMData:
    """A 3D point distribution model as stored by OpenFace.

    Attributes:
        mean_shape: (n, 3) float64, the mean 3D shape (millimetres).
        principal_components: (n, 3, m) float64, the shape basis (mode k moves point i by
            ``principal_components[i, :, k]``).
        eigenvalues: (m,) float64, the variance of each mode.
    """

    mean_shape: torch.Tensor
    principal_components: torch.Tensor
    eigenvalues: torch.Tensor

    @property
    def num_points(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_modes(self) -> int:
        return self.eigenvalues.shape[0]


def read_pdm(path: str | Path) -> PDMData:
    """Read a PDM text file: mean (3n×1), components (3n×m), eigenvalues (1×m or m×1).

    The 3n rows hold all x coordinates, then all y, then all z.
    """
    reader = TextReader(path)
    mean = reader.matrix("mean shape", shape=(None, 1))
    if mean.shape[0] == 0 or mean.shape[0] % 3:
        raise reader.error(f"mean shape: expected 3n rows, found {mean.shape[0]}")
    n = mean.shape[0] // 3
    components = reader.matrix("principal components", shape=(3 * n, None))
    m = components.shape[1]
    eigen = reader.matrix("eigenvalues")
    if eigen.size != m or 1 not in eigen.shape:
        raise reader.error(f"eigenvalues: expected a 1x{m} or {m}x1 matrix, found {eigen.shape[0]}x{eigen.shape[1]}")
    eigen = eigen.reshape(-1)
    if not all(np.isfinite(a).all() for a in (mean, components, eigen)):
        raise reader.error("expected finite numbers, found NaN or infinity")
    if (eigen <= 0).any():
        raise reader.error("eigenvalues: expected all eigenvalues > 0")
    return PDMData(
        mean_shape=torch.from_numpy(mean.reshape(3, n).T.copy()),
        principal_components=torch.from_numpy(components.reshape(3, n, m).transpose(1, 0, 2).copy()),
        eigenvalues=torch.from_numpy(eigen.copy()),
    )
