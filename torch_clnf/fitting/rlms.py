"""NU-RLMS: regularised landmark mean-shift, vectorised over faces and landmarks."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..models import PointDistributionModel
from ..models.pdm import clamp_between, diagonal, gauss_newton_step
from ..models.compiling import compiled_function
from ..models.constants import constant
from ..models.rotation import euler_to_matrix, matrix_to_euler
from ..models.sync import static_graph, syncs_cheaply
from .config import FitConfig
from .mean_shift import KernelTable, Sigma, kernel_table, log_likelihood, mean_shift_at


@dataclass
class ResponseFrame:
    """What one scale's responses give NU-RLMS (all batched over faces B).

    Attributes:
        maps: (B, n, w, w) response maps; visible: (B, n) bool.
        base_shape: (B, n, 2) the landmarks (pixels) the maps are centred on.
        image_to_reference, reference_to_image: (B, 2, 2) similarities.
        weights: (B, n) per-landmark weights of the least squares (1 for plain RLMS).
        windows: (B,) each face's own map size (float64 where the device has it), where faces
            of several models share a batch (their maps zero-padded to the largest, their
            landmarks padded with invisible ones, see :mod:`.parts`); None: every map is w × w.
        points: (B, n, 1), 1 for a model's own landmarks and 0 for padding (None: no padding).
    """

    maps: torch.Tensor
    visible: torch.Tensor
    base_shape: torch.Tensor
    image_to_reference: torch.Tensor
    reference_to_image: torch.Tensor
    weights: torch.Tensor
    windows: torch.Tensor | None = None
    points: torch.Tensor | None = None
    _shared: tuple | None = field(default=None, repr=False, compare=False)

    def shared(self, sigma: Sigma, kde_step: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, "KernelTable"]:
        """What both phases of a scale take from its frame, made once: the (B, 2n, 1) weights per
        coordinate (0 where not visible), the two similarities transposed, the KDE kernels."""
        if self._shared is None or self._shared[0] is not sigma or self._shared[1] != kde_step:
            weights = (self.weights * self.visible).repeat_interleave(2, 1)[..., None]
            self._shared = (sigma, kde_step, (weights, self.image_to_reference.mT, self.reference_to_image.mT,
                                              kernel_table(self.maps.shape[-1], sigma, kde_step, self.base_shape)))
        return self._shared[2]


class PhaseResult(NamedTuple):
    """Where one NU-RLMS phase left a batch of faces.

    Attributes:
        params_global: (B, 6); params_local: (B, m).
        likelihood: (B,) log-likelihood of the final positions; None where not asked for.
        failed: (B,) bool, faces whose Gauss-Newton system could not be solved (singular or
            non-finite); they keep the params they had.
    """

    params_global: torch.Tensor
    params_local: torch.Tensor
    likelihood: torch.Tensor | None
    failed: torch.Tensor


class _Iterate(NamedTuple):
    """The state NU-RLMS carries from one iteration to the next (all (B, ...) batched; the flags
    shaped (B, 1, 1) as the tensors they select between)."""

    params_global: torch.Tensor
    params_local: torch.Tensor
    rotation: torch.Tensor          # (B, 3, 3), the rotation of params_global (see PointDistributionModel.rotate)
    shape: torch.Tensor             # (B, n, 2) the projection of the params, pixels
    jacobian: torch.Tensor          # (B, 2n, k) its Jacobian, rows x₀, y₀, x₁, …
    running: torch.Tensor           # (B, 1, 1) bool, neither converged nor failed nor inactive
    failed: torch.Tensor            # (B, 1, 1) bool
    moved: torch.Tensor             # (B, 1, 1) bool, took at least one step
    last: torch.Tensor              # (B, n, 2) map positions of the last step, for the likelihood


class _System(NamedTuple):
    """What every iteration of one phase shares (``m`` local params, ``k`` = 6 [+ m] columns;
    per-face tables with a leading B where each face has its own model)."""

    regulariser: torch.Tensor       # (k, k) diag(prior)
    prior_rows: torch.Tensor | None     # (m, k) or (B, m, k): p ↦ −Λ p as a row; None in a rigid phase
    low: torch.Tensor               # (m,) or (B, m), the bounds of the local params
    high: torch.Tensor
    weights: torch.Tensor           # (B, 2n, 1) per coordinate
    image_to_reference: torch.Tensor    # (B, 2, 2), transposed: rows @ it maps points
    reference_to_image: torch.Tensor    # (B, 2, 2), transposed
    kernels: KernelTable                # the mean-shift's KDE kernels
    centre: torch.Tensor                # the maps' centre, map pixels: 0-dim, or (B, 1, 1) per face


def nu_rlms(pdm: PointDistributionModel, params_global: torch.Tensor, params_local: torch.Tensor,
            frame: ResponseFrame, rigid: bool, sigma: Sigma, reg_factor: float | torch.Tensor, iterations: int,
            active: torch.Tensor, convergence: float = 0.01, kde_step: float = 0.1, shape_sigmas: float = 3.0,
            compiled: bool = False, likelihood: bool = True) -> PhaseResult:
    """One NU-RLMS phase (rigid only, or rigid + non-rigid) for a batch of faces.

    Each iteration: mean-shift of every landmark on its response map (KDE ``sigma``), mapped to
    the image; a Gauss-Newton step on the params with the PDM Jacobian, prior
    ``reg_factor / eigenvalue`` on the local params; the step composed into the params and the
    local params clamped. A face stops when its shape moves less than ``convergence`` pixels;
    inactive and stopped faces keep their params, so a batch fits as its faces would one by one.

    Args:
        params_global: (B, 6); params_local: (B, m).
        sigma, reg_factor: numbers, or per face (B,) and (B, 1) tensors.
        active: (B,) bool, the faces to fit.
        compiled: run the phase (all its ``iterations``, finished faces masked) as one compiled
            package (:mod:`~torch_clnf.models.compiling`; same results up to float rounding).
        likelihood: compute the final positions' likelihood (OpenFace keeps only the last
            phase's of a scale; some 20 operations).
    """
    if frame.windows is None:
        centre = constant((frame.maps.shape[-1] - 1) / 2, params_global)
    else:
        centre = ((frame.windows - 1) / 2).to(params_global.dtype)[:, None, None]
    regulariser, prior_rows, low, high = _priors(pdm, reg_factor, rigid, shape_sigmas)
    system = _System(regulariser, prior_rows, low, high, *frame.shared(sigma, kde_step), centre)
    if compiled:                                    # (the likelihood too: it costs nothing more there)
        return compiled_function(run_phase, PhaseResult._make)(pdm, params_global, params_local, frame, system,
                                                               active, rigid, sigma, convergence, kde_step,
                                                               shape_sigmas, iterations, True)
    return run_phase(pdm, params_global, params_local, frame, system, active, rigid, sigma, convergence, kde_step,
                     shape_sigmas, iterations, likelihood)


def run_phase(pdm: PointDistributionModel, params_global: torch.Tensor, params_local: torch.Tensor,
              frame: ResponseFrame, system: "_System", active: torch.Tensor, rigid: bool, sigma: Sigma,
              convergence: float, kde_step: float, shape_sigmas: float, iterations: int,
              likelihood: bool) -> PhaseResult:
    """:func:`nu_rlms` from its phase's ``system``: the start, the iterations (leaving the loop early
    where every face has stopped and the host may read that cheaply; else all of them, finished
    faces masked: one graph to compile) and the params they end at."""
    # the rotation is carried as a matrix through the iterations and read back as Euler angles at
    # the end (OpenFace converts at every step: the same rotation, up to float rounding)
    start_rotation = params_global[:, 1:4]
    rotation = euler_to_matrix(start_rotation)
    shape, jacobian = pdm.project_with_jacobian(params_global, params_local, rigid, rotation)   # (B, n, 2), (B, n, 2, k)
    last = (shape - frame.base_shape) @ system.image_to_reference + system.centre            # for the likelihood
    flags = active.view(-1, 1, 1)
    state = _Iterate(params_global, params_local, rotation, shape, jacobian.flatten(1, 2), flags.clone(),
                     torch.zeros_like(flags), torch.zeros_like(flags), last)
    for k in range(iterations):
        if k and syncs_cheaply(state.running) and not bool(state.running.any()):   # (the first: a masked no-op
            break                                                                 # where no face is active)
        state = iteration(pdm, frame, state, system, rigid, sigma, convergence, kde_step, shape_sigmas)
    euler = torch.where(state.moved.view(-1, 1), matrix_to_euler(state.rotation), start_rotation)
    params_global = torch.cat([state.params_global[:, :1], euler, state.params_global[:, 4:]], 1)
    fit_likelihood = log_likelihood(frame.maps, state.last[..., 0], state.last[..., 1], frame.visible, sigma) \
        if likelihood else None
    return PhaseResult(params_global, state.params_local, fit_likelihood, state.failed.view(-1))


_constants: "weakref.WeakKeyDictionary[PointDistributionModel, dict]" = weakref.WeakKeyDictionary()


def _priors(pdm: PointDistributionModel, reg_factor: float | torch.Tensor, rigid: bool,
            shape_sigmas: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """A phase's regulariser Λ (k, k), its local rows negated (m, k) (None when rigid), and the
    local params' bounds; per face (leading B) where the model or ``reg_factor`` is. Made once per
    model and number ``reg_factor`` (some 15 operations a phase otherwise)."""
    key = (reg_factor, rigid, shape_sigmas, id(pdm.eigenvalues))
    # (a traced graph's are not kept)
    kept = not isinstance(reg_factor, torch.Tensor) and not static_graph() and not torch.compiler.is_compiling()
    found = _constants.setdefault(pdm, {}).get(key) if kept else None
    if found is None:
        regulariser = diagonal(pdm.prior(reg_factor, rigid))                      # (k, k) or (B, k, k)
        limit = pdm.local_limit(shape_sigmas)
        found = (regulariser, None if rigid else -regulariser[..., 6:, :], -limit, limit)
        if kept:
            _constants[pdm][key] = found                                          # a few per model: scales × 2
    return found


class ScaleFit(NamedTuple):
    """Where a scale's two phases left a batch of faces (see :func:`fit_scale`)."""

    params_global: torch.Tensor
    params_local: torch.Tensor
    active: torch.Tensor
    success: torch.Tensor
    likelihood: torch.Tensor


def fit_scale(pdm: PointDistributionModel, params_global: torch.Tensor, params_local: torch.Tensor,
              frame: ResponseFrame, sigma: Sigma, reg_factor: float | torch.Tensor, config: FitConfig,
              active: torch.Tensor, success: torch.Tensor, likelihood: torch.Tensor) -> ScaleFit:
    """One scale of OpenFace's ``CLNF::Fit``: a rigid NU-RLMS phase, then a rigid + non-rigid one
    (``config``'s iterations, convergence, KDE step, clamp; with ``config.compile`` both phases run
    as one compiled package). A face whose system could not be solved fails and stops; one whose
    scale drops below ``config.min_scale`` (or is NaN) too.

    Args:
        active, success: (B,) bool; likelihood: (B,) the last scale's, kept where not active.
    """
    args = (pdm, params_global, params_local, frame, sigma, reg_factor, config.iterations, config.convergence,
            config.kde_step, config.shape_sigmas, config.min_scale, active, success, likelihood)
    if config.compile:
        return compiled_function(run_scale, ScaleFit._make)(*args)
    return run_scale(*args)


def run_scale(pdm: PointDistributionModel, params_global: torch.Tensor, params_local: torch.Tensor,
              frame: ResponseFrame, sigma: Sigma, reg_factor: float | torch.Tensor, iterations: int,
              convergence: float, kde_step: float, shape_sigmas: float, min_scale: float, active: torch.Tensor,
              success: torch.Tensor, likelihood: torch.Tensor) -> ScaleFit:
    """:func:`fit_scale` from its config's numbers."""
    for rigid in (True, False):
        phase = nu_rlms(pdm, params_global, params_local, frame, rigid, sigma, reg_factor, iterations, active,
                        convergence, kde_step, shape_sigmas, likelihood=not rigid)   # a scale's likelihood is its last phase's
        params_global, params_local = phase.params_global, phase.params_local
        success = success & ~phase.failed
        active = active & ~phase.failed
    likelihood = torch.where(active, phase.likelihood, likelihood)
    shrunk = ~(params_global[:, 0] >= min_scale)                                  # also catches NaN
    return ScaleFit(params_global, params_local, active & ~shrunk, success & ~(active & shrunk), likelihood)


def iteration(pdm: PointDistributionModel, frame: ResponseFrame, state: _Iterate, system: _System, rigid: bool,
              sigma: Sigma, convergence: float, kde_step: float, shape_sigmas: float) -> _Iterate:
    """One NU-RLMS iteration of :func:`nu_rlms`: the step from ``state.shape``, then the new shape
    and which faces still run. Reads nothing back on the host (so it compiles to one graph).

    Written in few tensor operations: for one face each costs microseconds of overhead, more
    than its arithmetic. A face that no longer runs takes a zero step (its params and rotation
    are unchanged by it, exactly)."""
    params_global, params_local, rotation, shape, jacobian, running, failed, moved, last = state
    batch = shape.shape[0]
    position = torch.bmm(shape - frame.base_shape, system.image_to_reference) + system.centre    # (B, n, 2) map pixels
    last = torch.where(running, position, last)
    shift = torch.bmm(mean_shift_at(frame.maps, position, sigma, kde_step, frame.windows, system.kernels),
                      system.reference_to_image)                                  # pixels
    prior = None if rigid else params_local.unsqueeze(1) @ system.prior_rows      # (B, 1, k) −Λ p
    step, solved = gauss_newton_step(jacobian, system.weights, shift.view(batch, 1, -1),   # W is 0 where not visible
                                     system.regulariser, prior)                   # (B, k, 1), (B, 1, 1)
    taken = running & solved
    failed = failed | (running != taken)                                          # running, not solved
    step = torch.where(taken, step, constant(0.0, step)).view(batch, -1)
    params_global, new_local = pdm.add_step(params_global, params_local, step)
    params_local = torch.where(taken.view(batch, 1), clamp_between(new_local, system.low, system.high), params_local)
    rotation = pdm.rotate(rotation, step)
    moved = moved | taken
    new_shape, jacobian = pdm.project_with_jacobian(params_global, params_local, rigid, rotation)
    moves = new_shape - shape if frame.points is None else (new_shape - shape) * frame.points   # padding: not the model's
    running = taken & (torch.linalg.vector_norm(moves, dim=(1, 2), keepdim=True) >= constant(convergence, shape))
    return _Iterate(params_global, params_local, rotation, new_shape, jacobian.flatten(1, 2), running, failed, moved,
                    last)
