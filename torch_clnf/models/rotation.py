"""OpenFace's rotation conventions, batched: Euler angles (pitch, yaw, roll) ↔ matrices."""
from __future__ import annotations

import math

import torch

from .constants import constant
from .linalg import asin, atan2
from .sync import static_graph


def _euler_terms() -> torch.Tensor:
    """(27, 9): ``R = Rx(pitch) Ry(yaw) Rz(roll)`` as a linear map of the 27 products
    ``u1[i] u2[j] u3[k]``, ``u = (1, sin, cos)`` of each angle; row ``9 i + 3 j + k``."""
    one, sin, cos = 0, 1, 2
    entries = ([((one, cos, cos), 1)],                                   # c2 c3
               [((one, cos, sin), -1)],                                  # -c2 s3
               [((one, sin, one), 1)],                                   # s2
               [((cos, one, sin), 1), ((sin, sin, cos), 1)],             # c1 s3 + s1 s2 c3
               [((cos, one, cos), 1), ((sin, sin, sin), -1)],            # c1 c3 - s1 s2 s3
               [((sin, cos, one), -1)],                                  # -s1 c2
               [((sin, one, sin), 1), ((cos, sin, cos), -1)],            # s1 s3 - c1 s2 c3
               [((sin, one, cos), 1), ((cos, sin, sin), 1)],             # s1 c3 + c1 s2 s3
               [((cos, cos, one), 1)])                                   # c1 c2
    terms = torch.zeros(27, 9, dtype=torch.float64)
    for entry, products in enumerate(entries):
        for (i, j, k), sign in products:
            terms[9 * i + 3 * j + k, entry] = sign
    return terms


_EULER_TERMS = _euler_terms()
_PHASE = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)                 # (sin, cos) = sin(θ + phase)
_EULER_ENTRIES = torch.tensor([2, 5, 1, 8, 0, 4])      # flat indices of R02, R12, R01, R22, R00, R11


def euler_to_matrix(euler: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``R = Rx(pitch) · Ry(yaw) · Rz(roll)``, as OpenFace builds them.

    Args:
        euler: (..., 3) radians, (pitch, yaw, roll).
    Returns:
        (..., 3, 3).
    """
    trig = torch.sin(euler[..., None] + constant(_PHASE, euler))                 # (..., 3, 2) sin, cos per angle
    u = torch.cat([torch.ones_like(trig[..., :1]), trig], -1)                    # (..., 3, 3) (1, sin, cos)
    products = (u[..., 0, :, None, None] * u[..., 1, None, :, None] * u[..., 2, None, None, :]).flatten(-3)
    return (products @ constant(_EULER_TERMS, euler)).unflatten(-1, (3, 3))


def matrix_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """Euler angles (pitch, yaw, roll) of rotation matrices, as OpenFace's quaternion route gives them.

    For a rotation ``R = Rx Ry Rz`` OpenFace's quaternion formulas reduce to ``yaw = asin(R02)``,
    ``pitch = atan2(-R12, R22)``, ``roll = atan2(-R01, R00)``; where OpenFace's quaternion is
    undefined (``1 + trace(R) <= 0``, rotations of about 180°) it gives NaN and then all zeros,
    and so does this.

    Args:
        rotation: (..., 3, 3).
    Returns:
        (..., 3) radians.
    """
    picked = rotation.flatten(-2)[..., constant(_EULER_ENTRIES, rotation, torch.long)]   # R02, R12, R01, R22, R00, R11
    yaw = asin(picked[..., 0].clamp(-1, 1))
    pitch_roll = atan2(-picked[..., 1:3], picked[..., 3:5])               # atan2(-R12, R22), atan2(-R01, R00)
    euler = torch.stack([pitch_roll[..., 0], yaw, pitch_roll[..., 1]], -1)
    defined = picked[..., 3:].sum(-1) > -1                                        # 1 + trace(R) > 0
    return torch.where(defined[..., None], euler, torch.zeros_like(euler))


# [v]× = (v @ _SKEW).view(3, 3): the 9 entries of the cross-product matrix as linear maps of v
_SKEW = torch.tensor([[0, 0, 0, 0, 0, -1, 0, 1, 0],
                      [0, 0, 1, 0, 0, 0, -1, 0, 0],
                      [0, -1, 0, 1, 0, 0, 0, 0, 0]], dtype=torch.float64)


def small_rotation(delta: torch.Tensor) -> torch.Tensor:
    """The rotation nearest to ``I + [delta]×``: OpenFace's update of a rotation by a small step.

    OpenFace orthonormalises ``I + K`` (K = [δ]×) with an SVD. Its orthonormal factor has a closed
    form, the rotation by ``atan |δ|`` about δ: ``I + K / c + K² / (c (c + 1))`` with
    ``c = sqrt(1 + |δ|²)``; as ``K² = δ δᵀ − |δ|² I`` this is ``(I + K + δ δᵀ / (c + 1)) / c``,
    which needs no SVD (so it runs on every device) and has no singularity at δ = 0.

    Args:
        delta: (..., 3) radians, rotation about x, y, z.
    Returns:
        (..., 3, 3).
    """
    one = constant(1.0, delta)
    column = delta.unsqueeze(-1)                                                     # (..., 3, 1)
    c = torch.sqrt(column.square().sum(-2, keepdim=True) + one)                      # (..., 1, 1)
    linear = torch.addmm(constant(_EYE, delta), delta.reshape(-1, 3), constant(_SKEW, delta))   # I + K, flat
    linear, outer = linear.view(*delta.shape[:-1], 3, 3), column * delta.unsqueeze(-2)
    if static_graph():                                                             # Core ML has no addcdiv
        return (linear + outer / (c + one)) / c
    return torch.addcdiv(linear, outer, c + one) / c


_EYE = torch.eye(3, dtype=torch.float64).flatten()
