"""Small batched linear algebra and angles that also run as a static graph (ONNX and Core ML have no
LAPACK ops; onnxruntime has no float64 ``Atan``, ``Asin`` or ``Conv``)."""
from __future__ import annotations

import torch

from .sync import static_graph


def solve(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with ``a @ x = b`` for symmetric positive definite ``a``, by Cholesky, as OpenFace
    solves its Gauss-Newton systems (``cv::solve`` with ``DECOMP_CHOLESKY``).

    Inside :func:`~torch_clnf.models.sync.fixed_iterations`: for the symmetric positive definite
    systems the fitter solves, Gauss-Jordan elimination without pivoting (``k`` unrolled steps of
    elementary ops) on the system scaled to a unit diagonal, ``D a D (x / D) = D b`` with
    ``D = diag(a)^-½`` (as accurate as LAPACK in float32; unscaled, the mixed units of
    scale, rotation, translation and shape params cost up to 1 % of the step); a singular system
    then gives a non-finite ``x`` and ``info`` is 0.

    Args:
        a: (B, k, k); b: (B, k, r).
    Returns:
        x: (B, k, r); info: (B,) int32, non-zero where LAPACK found ``a`` not positive definite.
    """
    if not static_graph():
        factor, info = torch.linalg.cholesky_ex(a)
        if a.device.type != "mps":
            return torch.cholesky_solve(b, factor), info
        half = torch.linalg.solve_triangular(factor, b, upper=False)      # MPS has no cholesky_solve
        return torch.linalg.solve_triangular(factor.mT, half, upper=True), info
    k = a.shape[-1]
    eye = torch.eye(k, dtype=a.dtype, device=a.device)
    units = eye.unsqueeze(-1)                                           # (k, k, 1), units[j] = e_j
    d = torch.rsqrt((a * eye).sum(-1, keepdim=True))                    # (B, k, 1), diag(a)^-½
    m = torch.cat([d * a * d.transpose(1, 2), d * b], -1)               # (B, k, k + r)
    for j in range(k):                  # few ops a step: the exported graph holds k copies
        row = m.narrow(1, j, 1)
        row = row / row.narrow(2, j, 1)                                 # (B, 1, k + r), pivot scaled to 1
        m = m - (m.narrow(2, j, 1) - units[j]) * row                    # row j becomes ``row``, column j e_j
    return d * m.narrow(2, k, b.shape[-1]), torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3) × (..., 3) → (..., 3) cross products (broadcast): ``torch.linalg.cross``, or its
    components inside :func:`~torch_clnf.models.sync.fixed_iterations` (Core ML has no cross)."""
    if not static_graph():
        return torch.linalg.cross(a, b)
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)


def inverse(a: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) → (B, 2, 2) inverses: ``torch.linalg.inv``, or the closed form inside
    :func:`~torch_clnf.models.sync.fixed_iterations`."""
    if not static_graph():
        return torch.linalg.inv(a)
    p, q, r, s = a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1]
    det = p * s - q * r
    return torch.stack([torch.stack([s, -q], -1), torch.stack([-r, p], -1)], -2) / det[:, None, None]


def atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.atan2``; inside :func:`~torch_clnf.models.sync.fixed_iterations` in float64, the
    float32 angle refined by one Newton step on ``y cos θ − x sin θ = 0`` (float64-exact: the
    float32 error squared), since onnxruntime computes ``Atan`` in float32 only."""
    if not static_graph() or y.dtype != torch.float64:
        return torch.atan2(y, x)
    angle = torch.atan2(y.float(), x.float()).to(y.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return angle + (y * cos - x * sin) / (x * cos + y * sin)


def asin(v: torch.Tensor) -> torch.Tensor:
    """``torch.asin`` of values in [−1, 1] (as :func:`atan2` inside a float64 static graph)."""
    if not static_graph() or v.dtype != torch.float64:
        return torch.asin(v)
    return atan2(v, torch.sqrt((1 - v * v).clamp(min=0)))
