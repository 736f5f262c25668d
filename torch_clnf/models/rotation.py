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
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = rotation.flatten(-2).unbind(-1)
    q0 = torch.sqrt(torch.clamp(1 + r00 + r11 + r22, min=0)) / 2
    q1, q2, q3 = (torch.stack([r21 - r12, r02 - r20, r10 - r01], -1) / (4 * q0.unsqueeze(-1))).unbind(-1)
    yaw = torch.asin(torch.clamp(2 * (q0 * q2 + q1 * q3), -1, 1))
    q00, q11, q22, q33 = q0 * q0, q1 * q1, q2 * q2, q3 * q3
    pitch = torch.atan2(2 * (q0 * q1 - q2 * q3), q00 - q11 - q22 + q33)
    roll = torch.atan2(2 * (q0 * q3 - q1 * q2), q00 + q11 - q22 - q33)
    euler = torch.stack((pitch, yaw, roll), -1)
    return torch.where(torch.isnan(euler).any(-1, keepdim=True), torch.zeros_like(euler), euler)


# [v]× = (v @ _SKEW).view(3, 3): the 9 entries of the cross-product matrix as linear maps of v.
_SKEW = torch.tensor([[0, 0, 0, 0, 0, -1, 0, 1, 0],
                      [0, 0, 1, 0, 0, 0, -1, 0, 0],
                      [0, -1, 0, 1, 0, 0, 0, 0, 0]], dtype=torch.float64)


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) → (..., 3, 3) cross-product matrices ``[v]×`` (``[v]× u = v × u``)."""
    return (v @ _SKEW.to(v.device, v.dtype)).unflatten(-1, (3, 3))


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
    # K² = δ δᵀ − |δ|² I
    squared = (delta * delta).sum(-1)[..., None, None]
    c = torch.sqrt(1 + squared)
    eye = torch.eye(3, dtype=delta.dtype, device=delta.device)
    outer = delta.unsqueeze(-1) * delta.unsqueeze(-2)
    return eye + skew(delta) / c + (outer - squared * eye) / (c * (c + 1))
