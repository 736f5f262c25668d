"""OpenFace's rotation conventions, batched: Euler angles (pitch, yaw, roll) ↔ matrices."""
from __future__ import annotations

import torch


def euler_to_matrix(euler: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``R = Rx(pitch) · Ry(yaw) · Rz(roll)``, as OpenFace builds them.

    Args:
        euler: (..., 3) radians, (pitch, yaw, roll).
    Returns:
        (..., 3, 3).
    """
    s1, s2, s3 = torch.sin(euler).unbind(-1)
    c1, c2, c3 = torch.cos(euler).unbind(-1)
    s1s2, c1s2 = s1 * s2, c1 * s2
    entries = (c2 * c3, -c2 * s3, s2,
               c1 * s3 + c3 * s1s2, c1 * c3 - s1s2 * s3, -c2 * s1,
               s1 * s3 - c1s2 * c3, c3 * s1 + c1s2 * s3, c1 * c2)
    return torch.stack(entries, -1).unflatten(-1, (3, 3))


def matrix_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """Euler angles (pitch, yaw, roll) of rotation matrices, through the quaternion as OpenFace does.

    Args:
        rotation: (..., 3, 3).
    Returns:
        (..., 3) radians; NaN (a degenerate matrix) becomes 0, as in OpenFace.
    """
    r = rotation
    q0 = torch.sqrt(torch.clamp(1 + r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2], min=0)) / 2
    q1 = (r[..., 2, 1] - r[..., 1, 2]) / (4 * q0)
    q2 = (r[..., 0, 2] - r[..., 2, 0]) / (4 * q0)
    q3 = (r[..., 1, 0] - r[..., 0, 1]) / (4 * q0)
    yaw = torch.asin(torch.clamp(2 * (q0 * q2 + q1 * q3), -1, 1))
    pitch = torch.atan2(2 * (q0 * q1 - q2 * q3), q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3)
    roll = torch.atan2(2 * (q0 * q3 - q1 * q2), q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3)
    euler = torch.stack((pitch, yaw, roll), -1)
    bad = torch.isnan(euler).any(-1, keepdim=True)
    return torch.where(bad, torch.zeros_like(euler), euler)


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) → (..., 3, 3) cross-product matrices ``[v]×`` (``[v]× u = v × u``)."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([torch.stack(r, -1) for r in ((zero, -z, y), (z, zero, -x), (-y, x, zero))], -2)


def small_rotation(delta: torch.Tensor) -> torch.Tensor:
    """The rotation nearest to ``I + [delta]×``: OpenFace's update of a rotation by a small step.

    OpenFace orthonormalises ``I + K`` (K = [δ]×) with an SVD. Its orthonormal factor has a closed
    form, the rotation by ``atan |δ|`` about δ: ``I + K / c + K² / (c (c + 1))`` with
    ``c = sqrt(1 + |δ|²)``, which needs no SVD (so it runs on every device) and has no
    singularity at δ = 0.

    Args:
        delta: (..., 3) radians, rotation about x, y, z.
    Returns:
        (..., 3, 3).
    """
    k = skew(delta)
    c = torch.sqrt(1 + (delta * delta).sum(-1))[..., None, None]
    eye = torch.eye(3, dtype=delta.dtype, device=delta.device)
    return eye + k / c + (k @ k) / (c * (c + 1))
