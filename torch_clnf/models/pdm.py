"""The point distribution model (PDM) as a batched nn.Module."""
from __future__ import annotations

import torch
from torch import nn

from ..openface import PDMData
from .constants import constant
from .linalg import cross, solve
from .rotation import euler_to_matrix, matrix_to_euler, small_rotation
from .sync import static_graph, syncs_cheaply


class PointDistributionModel(nn.Module):
    """3D shape model ``X = mean + Φ p`` with weak-perspective projection, batched over faces.

    Global params ``(B, 6)`` are ``(scale, pitch, yaw, roll, tx, ty)`` (radians, pixels); local
    params ``(B, m)`` are the shape-mode weights. The 2D shape is
    ``x = scale · R(pitch, yaw, roll)[:2] · X + t``, with OpenFace's Euler convention.

    The model's tensors may also carry a leading face dimension, one model per face
    (:meth:`StackedPDM.tiled <torch_clnf.models.stacking.StackedPDM.tiled>`); every method
    then uses each face's own model.

    Example:
        >>> pdm = PointDistributionModel(read_pdm("pdms/In-the-wild_aligned_PDM_68.txt"))
        >>> g = pdm.params_from_box(torch.tensor([[100., 80., 200., 220.]]))
        >>> pdm.project(g).shape
        torch.Size([1, 68, 2])
    """

    mean_shape: torch.Tensor
    principal_components: torch.Tensor
    eigenvalues: torch.Tensor

    def __init__(self, data: PDMData, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        components = data.principal_components
        self.register_buffer("mean_shape", data.mean_shape.to(dtype))                      # ([B,] n, 3)
        self.register_buffer("principal_components", components.to(dtype))                # ([B,] n, 3, m)
        self.register_buffer("eigenvalues", data.eigenvalues.to(dtype))                    # ([B,] m)
        n, _, m = components.shape[-3:]
        faces = components.shape[:-3]
        # the same basis laid out for matmuls: ([B,] m, n·3) and ([B,] 3, n·m)
        self.register_buffer("_basis_by_mode", components.movedim(-1, -3).reshape(*faces, m, n * 3).to(dtype))
        self.register_buffer("_basis_by_axis", components.movedim(-2, -3).reshape(*faces, 3, n * m).to(dtype))
        self.register_buffer("_mean_flat", data.mean_shape.reshape(*faces, n * 3).to(dtype), persistent=False)
        device = components.device
        self.register_buffer("_eye2", torch.eye(2, dtype=dtype, device=device), persistent=False)
        self.register_buffer("_additive", torch.tensor([1.0, 0, 0, 0, 1, 1], dtype=dtype, device=device), persistent=False)
        self._translations: dict[int, torch.Tensor] = {}

    @property
    def num_points(self) -> int:
        return self.mean_shape.shape[-2]

    @property
    def num_modes(self) -> int:
        return self.eigenvalues.shape[-1]

    def prior(self, factor: float, rigid: bool = False) -> torch.Tensor:
        """The Gauss-Newton prior on the Jacobian's columns: 0 on the 6 global params,
        ``factor / eigenvalue`` on the local ones. (6 [+ m]), or (B, 6 [+ m]) per face."""
        inverse = factor / self.eigenvalues
        zeros = inverse.new_zeros(*inverse.shape[:-1], 6)
        return zeros if rigid else torch.cat([zeros, inverse], -1)

    def _local(self, params_global: torch.Tensor, params_local: torch.Tensor | None) -> torch.Tensor:
        if params_local is None:
            return params_global.new_zeros(params_global.shape[0], self.num_modes)
        return params_local

    def shape_3d(self, params_local: torch.Tensor) -> torch.Tensor:
        """(B, m) local params → (B, n, 3) model-frame 3D shape (millimetres)."""
        basis = self._basis_by_mode
        if basis.dim() == 2:
            return torch.addmm(self._mean_flat, params_local, basis).view(-1, self.num_points, 3)
        return self.mean_shape + (params_local.unsqueeze(1) @ basis).view(-1, self.num_points, 3)

    def reference_shape(self, params_local: torch.Tensor, scale: float) -> torch.Tensor:
        """(B, m) local params → (B, n, 2) the shape in OpenFace's reference frame of a patch
        scale: ``scale`` times its x, y, unrotated, untranslated (:meth:`project` of the global
        params (scale, 0, 0, 0, 0, 0), without building their identity rotation)."""
        return scale * self.shape_3d(params_local)[..., :2]

    def project(self, params_global: torch.Tensor, params_local: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 6) global, (B, m) local params → (B, n, 2) landmarks, pixels."""
        return self.project_3d(params_global, params_local)[..., :2]

    def project_3d(self, params_global: torch.Tensor, params_local: torch.Tensor | None = None) -> torch.Tensor:
        """The rotated, scaled, translated 3D shape: (B, n, 3); x, y in pixels, z relative."""
        shape = self.shape_3d(self._local(params_global, params_local))
        rotation = euler_to_matrix(params_global[:, 1:4])
        out = params_global[:, None, :1] * (shape @ rotation.transpose(1, 2))
        translation = torch.cat([params_global[:, 4:6], params_global.new_zeros(params_global.shape[0], 1)], 1)
        return out + translation[:, None]

    def jacobian(self, params_global: torch.Tensor, params_local: torch.Tensor | None = None,
                 rigid: bool = False) -> torch.Tensor:
        """d landmarks / d params, the rotation taken as a small update ``R · (I + [δ]×)``.

        Returns:
            (B, n, 2, 6 + m), or (B, n, 2, 6) with ``rigid=True``; columns are
            (scale, δx, δy, δz, tx, ty, p_0 … p_{m-1}).
        """
        return self.project_with_jacobian(params_global, params_local, rigid)[1]

    def project_with_jacobian(self, params_global: torch.Tensor, params_local: torch.Tensor | None = None,
                              rigid: bool = False, rotation: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`project` and :meth:`jacobian` together, sharing the shape and rotation.

        Args:
            rotation: (B, 3, 3) the rotation matrix of ``params_global`` when the caller has it
                (iterations carry it, see :meth:`rotate`); its Euler angles are then not read.
        Returns:
            (B, n, 2) landmarks, pixels; (B, n, 2, 6 [+ m]) Jacobian.
        """
        batch, n = params_global.shape[0], self.num_points
        shape = self.shape_3d(self._local(params_global, params_local))              # (B, n, 3)
        if rotation is None:
            rotation = euler_to_matrix(params_global[:, 1:4])
        top = rotation[:, :2]                                                         # (B, 2, 3)
        scaled_top = params_global[:, :1].unsqueeze(-1) * top                         # s R, rows x and y
        rotated = torch.bmm(shape, top.mT)                                            # (B, n, 2)
        landmarks = torch.bmm(shape, scaled_top.mT) + params_global[:, 4:].unsqueeze(1)
        # d(R (I + [δ]×) X)/dδ = R [δ ↦ δ × X] = -R [X]×, whose row r is s X × R_r (a cross product per point)
        d_rot = cross(shape.unsqueeze(2), scaled_top.unsqueeze(1))                    # (B, n, 2, 3)
        columns = [rotated.unsqueeze(-1), d_rot, self._translation_columns(batch)]
        if not rigid:
            columns.append((scaled_top @ self._basis_by_axis).view(batch, 2, n, self.num_modes).transpose(1, 2))  # (B, n, 2, m)
        return landmarks, torch.cat(columns, -1)

    def _translation_columns(self, batch: int) -> torch.Tensor:
        """(B, n, 2, 2) identity blocks: d landmarks / d (tx, ty) (a view, kept per batch size)."""
        if static_graph() or torch.compiler.is_compiling():      # (a traced batch size is symbolic)
            return self._eye2.expand(batch, self.num_points, 2, 2)
        found = self._translations.get(batch)
        if found is None or found._base is not self._eye2:
            found = self._translations[batch] = self._eye2.expand(batch, self.num_points, 2, 2)
        return found

    def update(self, params_global: torch.Tensor, params_local: torch.Tensor | None,
               delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a step ``delta`` (B, 6) or (B, 6 + m) in the Jacobian's parametrisation.

        Scale and translation are added; the rotation is composed, ``R_new = R · R(δ)``, and
        turned back into Euler angles. Returns the new (B, 6) global and (B, m) local params.
        """
        rotation = self.rotate(euler_to_matrix(params_global[:, 1:4]), delta)
        new_global, new_local = self.add_step(params_global, params_local, delta)
        new_global = torch.cat([new_global[:, :1], matrix_to_euler(rotation), new_global[:, 4:]], 1)
        return new_global, new_local

    def add_step(self, params_global: torch.Tensor, params_local: torch.Tensor | None,
                 delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The additive part of :meth:`update`: scale, translation and local params (the
        rotation entries of the global params are left as they are; see :meth:`rotate`)."""
        local = self._local(params_global, params_local)
        new_global = params_global + delta[:, :6] * self._additive
        new_local = local + delta[:, 6:] if delta.shape[1] > 6 else local
        return new_global, new_local

    @staticmethod
    def rotate(rotation: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) rotations composed with a step's small rotation ``delta[:, 1:4]``: ``R · R(δ)``."""
        return torch.bmm(rotation, small_rotation(delta[:, 1:4]))

    def clamp(self, params_local: torch.Tensor, n_sigmas: float = 3.0) -> torch.Tensor:
        """Local params limited to ± n_sigmas standard deviations of each mode."""
        limit = self.local_limit(n_sigmas)
        return clamp_between(params_local, -limit, limit)

    def local_limit(self, n_sigmas: float = 3.0) -> torch.Tensor:
        """(m,) or (B, m): n_sigmas standard deviations of each mode, the bound :meth:`clamp` applies."""
        return n_sigmas * torch.sqrt(self.eigenvalues)

    def params_from_box(self, boxes: torch.Tensor, rotation: torch.Tensor | None = None,
                        params_local: torch.Tensor | None = None) -> torch.Tensor:
        """Global params that fit the (rotated) shape into face boxes, as OpenFace initialises.

        Args:
            boxes: (B, 4) ``(x, y, width, height)`` pixels.
            rotation: (B, 3) radians (default 0).
            params_local: (B, m) (default 0).
        Returns:
            (B, 6) global params.
        """
        rotation = boxes.new_zeros(boxes.shape[0], 3) if rotation is None else rotation
        shape = self.shape_3d(self._local(boxes, params_local))
        rotated = torch.einsum("bij,bnj->bni", euler_to_matrix(rotation), shape)
        low, high = rotated[..., :2].amin(1), rotated[..., :2].amax(1)    # (B, 2)
        extent = high - low
        scale = (boxes[:, 2] / extent[:, 0] + boxes[:, 3] / extent[:, 1]) / 2
        centre = boxes[:, :2] + boxes[:, 2:] / 2
        translation = centre - scale[:, None] * (low + high) / 2
        return torch.cat([scale[:, None], rotation, translation], 1)

    def params_from_landmarks(self, landmarks: torch.Tensor, visible: torch.Tensor | None = None,
                              rotation: torch.Tensor | None = None, max_iterations: int = 1000,
                              compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Global and local params whose projection best fits given 2D landmarks (least squares).

        Regularised Gauss-Newton with damping 0.75 and prior ``1 / eigenvalue`` on the local
        params, started from the landmarks' bounding box, as OpenFace's ``CalcParams``; a face
        stops when its error has not improved by 0.1 % three times.

        Args:
            landmarks: (B, n, 2) pixels.
            visible: (B, n) bool, landmarks to use (default all); the others may be anything, NaN too.
            rotation: (B, 3) initial rotation, radians (default 0).
            compiled: run it as one compiled package, its steps a loop inside (same results up to
                float rounding; see :mod:`.compiling`).
        Returns:
            (B, 6) global params, (B, m) local params.
        """
        if compiled:
            from .compiling import compiled_function

            return compiled_function(_calc_params)(self, landmarks, visible, rotation, max_iterations)
        return _calc_params(self, landmarks, visible, rotation, max_iterations)


def _calc_params(pdm: PointDistributionModel, landmarks: torch.Tensor, visible: torch.Tensor | None,
                 rotation: torch.Tensor | None, max_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`PointDistributionModel.params_from_landmarks` (what its ``compiled`` runs as one package)."""
    batch, n = landmarks.shape[:2]
    visible = torch.ones(batch, n, dtype=torch.bool, device=landmarks.device) if visible is None else visible
    weight = visible.to(landmarks.dtype)
    landmarks = torch.where(visible[..., None], landmarks, 0.0)                   # unused ones may be NaN
    big = torch.finfo(landmarks.dtype).max
    low = torch.where(visible[..., None], landmarks, big).amin(1)
    high = torch.where(visible[..., None], landmarks, -big).amax(1)
    mean = pdm.mean_shape.expand(batch, n, 3)
    model_low = torch.where(visible[..., None], mean[..., :2], big).amin(1)
    model_high = torch.where(visible[..., None], mean[..., :2], -big).amax(1)
    scale = ((high - low) / (model_high - model_low)).mean(1)
    rotation = landmarks.new_zeros(batch, 3) if rotation is None else rotation
    params = torch.cat([scale[:, None], rotation, (low + high) / 2], 1)
    local = landmarks.new_zeros(batch, pdm.num_modes)

    regulariser = diagonal(pdm.prior(1.0))
    prior_rows = -regulariser[..., 6:, :]                                       # p ↦ −Λ p, as a row
    start_rotation = params[:, 1:4]
    rotation = euler_to_matrix(start_rotation)                  # carried as a matrix, as in nu_rlms
    moved = torch.zeros(batch, 1, 1, dtype=torch.bool, device=landmarks.device)
    projected, jacobian = pdm.project_with_jacobian(params, local, rotation=rotation)
    weight2 = weight.repeat_interleave(2, 1)[..., None]                          # (B, 2n, 1)
    current = torch.sqrt(((projected - landmarks).square().sum(-1) * weight).sum(1))
    stalls = torch.zeros(batch, dtype=torch.long, device=landmarks.device)
    state = (params, local, rotation, projected, jacobian.flatten(1, 2), current, stalls, moved)
    if torch.compiler.is_compiling() and not static_graph():   # a package: the loop and its stop in the graph
        state = _steps_until_stalled(pdm, landmarks, weight, weight2, prior_rows, regulariser, state, max_iterations)
    else:
        check_every = 1 if syncs_cheaply(landmarks) else CHECK_EVERY      # GPUs: read the flags back less often
        for iteration in range(max_iterations):
            if iteration % check_every == 0 and not bool((state[6] < 3).any()):
                break
            state = _calc_params_step(pdm, landmarks, weight, weight2, prior_rows, regulariser, state)
    params, local, rotation, _, _, _, _, moved = state
    euler = torch.where(moved.view(batch, 1), matrix_to_euler(rotation), start_rotation)
    return torch.cat([params[:, :1], euler, params[:, 4:]], 1), local


def _steps_until_stalled(pdm: PointDistributionModel, landmarks: torch.Tensor, weight: torch.Tensor,
                         weight2: torch.Tensor, prior_rows: torch.Tensor, regulariser: torch.Tensor,
                         state: tuple[torch.Tensor, ...], max_iterations: int) -> tuple[torch.Tensor, ...]:
    """The steps of :func:`_calc_params` as one loop of the graph being compiled (``while_loop``):
    steps until every face has stalled three times, at most ``max_iterations``."""
    from torch._higher_order_ops.while_loop import while_loop

    def going(count: torch.Tensor, *carried: torch.Tensor) -> torch.Tensor:
        return (count < max_iterations) & (carried[6] < 3).any()

    def step(count: torch.Tensor, *carried: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (count + 1, *_calc_params_step(pdm, landmarks, weight, weight2, prior_rows, regulariser, carried))

    count = torch.zeros((), dtype=torch.long, device=landmarks.device)
    return tuple(while_loop(going, step, (count, *state))[1:])


def clamp_between(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``values`` limited to [low, high] elementwise (``torch.clamp`` with tensor bounds, which Core ML lacks)."""
    return torch.maximum(torch.minimum(values, high), low)


def diagonal(values: torch.Tensor) -> torch.Tensor:
    """(..., k) → (..., k, k) diagonal matrices (``torch.diag_embed``, which Core ML lacks)."""
    return values.unsqueeze(-1) * torch.eye(values.shape[-1], dtype=values.dtype, device=values.device)


CHECK_EVERY = 8      # CalcParams steps between reads of the stop flags (GPUs)


def gauss_newton_step(jacobian: torch.Tensor, weights: torch.Tensor, residual: torch.Tensor, regulariser: torch.Tensor,
                      prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One regularised Gauss-Newton step of the PDM params, as NU-RLMS and CalcParams take it:
    ``(JᵀWJ + Λ)⁻¹ (JᵀW r − Λ p)``, Λ the prior (0 on the global params), in the layouts the
    fitting loops carry (few operations a step).

    Args:
        jacobian: (B, 2n, k), rows x₀, y₀, x₁, …; weights: (B, 2n, 1); residual: (B, 1, 2n), a row.
        regulariser: Λ, (k, k) or (B, k, k); prior: (B, 1, k) the row ``−Λ p`` (None: a rigid step).
    Returns:
        step: (B, k, 1); solved: (B, 1, 1) bool.
    """
    weighted = jacobian * weights                                                 # W J
    gradient = torch.bmm(residual, weighted)                                      # a row, faster than JᵀW r
    if prior is not None:
        gradient = gradient + prior                  # (not baddbmm: its rounding differs, this is OpenFace's)
    step, info = solve(torch.baddbmm(regulariser, weighted.mT, jacobian), gradient.mT)
    solved = (step.sum((1, 2), keepdim=True).abs() < constant(torch.inf, step)) & (info.view(-1, 1, 1) == 0)
    return step, solved


def _calc_params_step(pdm: PointDistributionModel, landmarks: torch.Tensor, weight: torch.Tensor, weight2: torch.Tensor,
                      prior_rows: torch.Tensor, regulariser: torch.Tensor,
                      state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """One damped Gauss-Newton step of :meth:`PointDistributionModel.params_from_landmarks` on
    ``state`` = (params, local, rotation, projected, jacobian (B, 2n, k), error, stalls, moved
    (B, 1, 1)), ``weight2`` the (B, 2n, 1) per-coordinate ``weight``, ``prior_rows`` the (m, k) or
    (B, m, k) map of the local params to the row ``−Λ p`` and ``regulariser`` Λ. A face whose error
    stalled three times takes a zero step, which leaves it exactly as it is. Reads nothing back on
    the host."""
    params, local, rotation, projected, jacobian, current, stalls, moved = state
    batch = params.shape[0]
    three, zero = constant(3, stalls), constant(0.0, params)
    active = stalls < three
    step, solved = gauss_newton_step(jacobian, weight2, (landmarks - projected).view(batch, 1, -1), regulariser,
                                     local.unsqueeze(1) @ prior_rows)
    solved = solved.view(batch)
    stalls = torch.where(active & ~solved, three, stalls)                     # degenerate landmarks: stop there
    active = active & solved
    taken = active.view(batch, 1, 1)
    step = torch.where(taken, constant(0.75, step) * step, zero).view(batch, -1)
    rotation = pdm.rotate(rotation, step)
    params, local = pdm.add_step(params, local, step)
    projected, jacobian = pdm.project_with_jacobian(params, local, rotation=rotation)
    jacobian = jacobian.flatten(1, 2)
    error = torch.sqrt(((projected - landmarks).square().sum(-1) * weight).sum(1))
    moved = moved | taken
    stalls = stalls + (active & (constant(0.999, current) * current < error)).to(stalls.dtype)
    current = error
    return params, local, rotation, projected, jacobian, current, stalls, moved
