"""NU-RLMS: regularised landmark mean-shift, vectorised over faces and landmarks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..models import PointDistributionModel
from ..models.linalg import solve
from ..models.rotation import euler_to_matrix, matrix_to_euler
from ..models.sync import syncs_cheaply
from .mean_shift import log_likelihood, mean_shift


@dataclass
class ResponseFrame:
    """What one scale's responses give NU-RLMS (all batched over faces B).

    Attributes:
        maps: (B, n, w, w) response maps; visible: (B, n) bool.
        base_shape: (B, n, 2) the landmarks (pixels) the maps are centred on.
        image_to_reference, reference_to_image: (B, 2, 2) similarities.
        weights: (B, n) per-landmark weights of the least squares (1 for plain RLMS).
    """

    maps: torch.Tensor
    visible: torch.Tensor
    base_shape: torch.Tensor
    image_to_reference: torch.Tensor
    reference_to_image: torch.Tensor
    weights: torch.Tensor


class PhaseResult(NamedTuple):
    """Where one NU-RLMS phase left a batch of faces.

    Attributes:
        params_global: (B, 6); params_local: (B, m).
        likelihood: (B,) log-likelihood of the final positions.
        failed: (B,) bool, faces whose Gauss-Newton system could not be solved (singular or
            non-finite); they keep the params they had.
    """

    params_global: torch.Tensor
    params_local: torch.Tensor
    likelihood: torch.Tensor
    failed: torch.Tensor


def nu_rlms(pdm: PointDistributionModel, params_global: torch.Tensor, params_local: torch.Tensor,
            frame: ResponseFrame, rigid: bool, sigma: float, reg_factor: float, iterations: int,
            active: torch.Tensor, convergence: float = 0.01, kde_step: float = 0.1, shape_sigmas: float = 3.0,
            ) -> PhaseResult:
    """One NU-RLMS phase (rigid only, or rigid + non-rigid) for a batch of faces.

    Each iteration: mean-shift of every landmark on its response map (KDE ``sigma``), mapped to
    the image; a Gauss-Newton step on the params with the PDM Jacobian, prior
    ``reg_factor / eigenvalue`` on the local params; the step composed into the params and the
    local params clamped. A face stops when its shape moves less than ``convergence`` pixels;
    inactive and stopped faces keep their params, so a batch fits as its faces would one by one.

    Args:
        params_global: (B, 6); params_local: (B, m).
        active: (B,) bool, the faces to fit.
    """
    batch = params_global.shape[0]
    window = frame.maps.shape[-1]
    centre = (window - 1) / 2
    prior = params_global.new_zeros(6 if rigid else 6 + pdm.num_modes)
    if not rigid:
        prior[6:] = reg_factor / pdm.eigenvalues
    weights = (frame.weights * frame.visible).repeat_interleave(2, 1)[..., None]  # (B, 2n, 1)
    regulariser = torch.diag(prior)
    identity = torch.eye(len(prior), dtype=prior.dtype, device=prior.device)
    running = active.clone()
    failed = torch.zeros_like(active)
    moved = torch.zeros_like(active)
    previous = None
    to_reference = frame.image_to_reference.transpose(1, 2)
    last = (pdm.project(params_global, params_local) - frame.base_shape) @ to_reference + centre   # for the likelihood
    # the rotation is carried as a matrix through the iterations and read back as Euler angles at
    # the end (OpenFace converts at every step: the same rotation, up to float rounding)
    start_rotation = params_global[:, 1:4]
    rotation = euler_to_matrix(start_rotation)
    for _ in range(iterations):
        shape, jacobian = pdm.project_with_jacobian(params_global, params_local, rigid, rotation)  # (B, n, 2), (B, n, 2, k)
        if previous is not None:
            running = running & (torch.linalg.vector_norm((shape - previous).flatten(1), dim=1) >= convergence)
        if syncs_cheaply(running) and not bool(running.any()):
            break
        previous = shape
        position = (shape - frame.base_shape) @ to_reference + centre                # (B, n, 2) map pixels
        last = torch.where(running[:, None, None], position, last)
        shift = mean_shift(frame.maps, position[..., 0], position[..., 1], sigma, kde_step)
        shift = (shift @ frame.reference_to_image.transpose(1, 2)) * frame.visible[..., None]
        jacobian = jacobian.flatten(1, 2)                                            # (B, 2n, k)
        weighted = (jacobian * weights).transpose(1, 2)                             # (B, k, 2n)
        gradient = (weighted @ shift.reshape(batch, -1, 1)).squeeze(-1)
        if not rigid:
            gradient[:, 6:] -= prior[6:] * params_local
        hessian = torch.where(running[:, None, None], regulariser + weighted @ jacobian, identity)
        step, info = solve(hessian, gradient.unsqueeze(-1))
        step = step.squeeze(-1)
        unsolved = running & ((info != 0) | ~torch.isfinite(step).all(1))
        failed = failed | unsolved
        running = running & ~unsolved
        new_global, new_local = pdm.add_step(params_global, params_local, step)
        new_local = pdm.clamp(new_local, shape_sigmas)
        keep = running[:, None]
        params_global = torch.where(keep, new_global, params_global)
        params_local = torch.where(keep, new_local, params_local)
        rotation = torch.where(keep[..., None], pdm.rotate(rotation, step), rotation)
        moved = moved | running
    euler = torch.where(moved[:, None], matrix_to_euler(rotation), start_rotation)
    params_global = torch.cat([params_global[:, :1], euler, params_global[:, 4:]], 1)
    likelihood = log_likelihood(frame.maps, last[..., 0], last[..., 1], frame.visible, sigma)
    return PhaseResult(params_global, params_local, likelihood, failed)
