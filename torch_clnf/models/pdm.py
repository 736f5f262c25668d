"""The point distribution model (PDM) as a batched nn.Module."""
from __future__ import annotations

import torch
from torch import nn

from ..openface import PDMData
from .rotation import euler_to_matrix, matrix_to_euler, skew, small_rotation


class PointDistributionModel(nn.Module):
    """3D shape model ``X = mean + Φ p`` with weak-perspective projection, batched over faces.

    Global params ``(B, 6)`` are ``(scale, pitch, yaw, roll, tx, ty)`` (radians, pixels); local
    params ``(B, m)`` are the shape-mode weights. The 2D shape is
    ``x = scale · R(pitch, yaw, roll)[:2] · X + t``, with OpenFace's Euler convention.

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
        self.register_buffer("mean_shape", data.mean_shape.to(dtype))                      # (n, 3)
        self.register_buffer("principal_components", data.principal_components.to(dtype))  # (n, 3, m)
        self.register_buffer("eigenvalues", data.eigenvalues.to(dtype))                    # (m,)

    @property
    def num_points(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_modes(self) -> int:
        return self.eigenvalues.shape[0]

    def _local(self, params_global: torch.Tensor, params_local: torch.Tensor | None) -> torch.Tensor:
        if params_local is None:
            return params_global.new_zeros(params_global.shape[0], self.num_modes)
        return params_local

    def shape_3d(self, params_local: torch.Tensor) -> torch.Tensor:
        """(B, m) local params → (B, n, 3) model-frame 3D shape (millimetres)."""
        return self.mean_shape + torch.einsum("nck,bk->bnc", self.principal_components, params_local)

    def project(self, params_global: torch.Tensor, params_local: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 6) global, (B, m) local params → (B, n, 2) landmarks, pixels."""
        return self.project_3d(params_global, params_local)[..., :2]

    def project_3d(self, params_global: torch.Tensor, params_local: torch.Tensor | None = None) -> torch.Tensor:
        """The rotated, scaled, translated 3D shape: (B, n, 3); x, y in pixels, z relative."""
        shape = self.shape_3d(self._local(params_global, params_local))
        rotation = euler_to_matrix(params_global[:, 1:4])
        out = params_global[:, None, :1] * torch.einsum("bij,bnj->bni", rotation, shape)
        translation = torch.cat([params_global[:, 4:6], params_global.new_zeros(params_global.shape[0], 1)], 1)
        return out + translation[:, None]

    def jacobian(self, params_global: torch.Tensor, params_local: torch.Tensor | None = None,
                 rigid: bool = False) -> torch.Tensor:
        """d landmarks / d params, the rotation taken as a small update ``R · (I + [δ]×)``.

        Returns:
            (B, n, 2, 6 + m), or (B, n, 2, 6) with ``rigid=True``; columns are
            (scale, δx, δy, δz, tx, ty, p_0 … p_{m-1}).
        """
        local = self._local(params_global, params_local)
        shape = self.shape_3d(local)                                     # (B, n, 3)
        rotation = euler_to_matrix(params_global[:, 1:4])[:, :2]         # (B, 2, 3)
        scale = params_global[:, 0, None, None, None]
        d_scale = torch.einsum("bij,bnj->bni", rotation, shape)          # (B, n, 2)
        # d(R (I + [δ]×) X)/dδ = R [e_k × X]: e_x × X = (0, -Z, Y), e_y × X = (Z, 0, -X), e_z × X = (-Y, X, 0)
        cross = -skew(shape)                                             # column k: e_k × X = -[X]× e_k
        d_rot = scale * torch.einsum("bij,bnjk->bnik", rotation, cross)  # (B, n, 2, 3)
        d_trans = torch.eye(2, dtype=shape.dtype, device=shape.device).expand(shape.shape[0], shape.shape[1], 2, 2)
        columns = [d_scale.unsqueeze(-1), d_rot, d_trans]
        if not rigid:
            columns.append(scale * torch.einsum("bij,njk->bnik", rotation, self.principal_components))
        return torch.cat(columns, -1)

    def update(self, params_global: torch.Tensor, params_local: torch.Tensor | None,
               delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a step ``delta`` (B, 6) or (B, 6 + m) in the Jacobian's parametrisation.

        Scale and translation are added; the rotation is composed, ``R_new = R · R(δ)``, and
        turned back into Euler angles. Returns the new (B, 6) global and (B, m) local params.
        """
        local = self._local(params_global, params_local)
        rotation = euler_to_matrix(params_global[:, 1:4]) @ small_rotation(delta[:, 1:4])
        new_global = torch.cat([params_global[:, :1] + delta[:, :1], matrix_to_euler(rotation),
                                params_global[:, 4:6] + delta[:, 4:6]], 1)
        new_local = local + delta[:, 6:] if delta.shape[1] > 6 else local
        return new_global, new_local

    def clamp(self, params_local: torch.Tensor, n_sigmas: float = 3.0) -> torch.Tensor:
        """Local params limited to ± n_sigmas standard deviations of each mode."""
        limit = n_sigmas * torch.sqrt(self.eigenvalues)
        return torch.maximum(torch.minimum(params_local, limit), -limit)

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
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global and local params whose projection best fits given 2D landmarks (least squares).

        Regularised Gauss-Newton with damping 0.75 and prior ``1 / eigenvalue`` on the local
        params, started from the landmarks' bounding box, as OpenFace's ``CalcParams``; a face
        stops when its error has not improved by 0.1 % three times.

        Args:
            landmarks: (B, n, 2) pixels.
            visible: (B, n) bool, landmarks to use (default all).
            rotation: (B, 3) initial rotation, radians (default 0).
        Returns:
            (B, 6) global params, (B, m) local params.
        """
        batch, n = landmarks.shape[:2]
        visible = torch.ones(batch, n, dtype=torch.bool, device=landmarks.device) if visible is None else visible
        weight = visible.to(landmarks.dtype)
        big = torch.finfo(landmarks.dtype).max
        low = torch.where(visible[..., None], landmarks, big).amin(1)
        high = torch.where(visible[..., None], landmarks, -big).amax(1)
        mean = self.mean_shape.expand(batch, n, 3)
        model_low = torch.where(visible[..., None], mean[..., :2], big).amin(1)
        model_high = torch.where(visible[..., None], mean[..., :2], -big).amax(1)
        scale = ((high - low) / (model_high - model_low)).mean(1)
        rotation = landmarks.new_zeros(batch, 3) if rotation is None else rotation
        params = torch.cat([scale[:, None], rotation, (low + high) / 2], 1)
        local = landmarks.new_zeros(batch, self.num_modes)

        def error(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return torch.sqrt((((self.project(g, p) - landmarks) ** 2).sum(-1) * weight).sum(1))

        prior = torch.cat([landmarks.new_zeros(6), 1 / self.eigenvalues])
        current = error(params, local)
        stalls = torch.zeros(batch, dtype=torch.long, device=landmarks.device)
        for _ in range(max_iterations):
            active = stalls < 3
            if not bool(active.any()):
                break
            residual = (landmarks - self.project(params, local)) * weight[..., None]          # (B, n, 2)
            jac = self.jacobian(params, local).flatten(1, 2)                                  # (B, 2n, k)
            jac_w = jac * weight.repeat_interleave(2, 1)[..., None]
            gradient = torch.einsum("bik,bi->bk", jac_w, residual.flatten(1, 2))
            gradient[:, 6:] -= prior[6:] * local
            hessian = torch.diag(prior) + jac_w.transpose(1, 2) @ jac
            step = 0.75 * torch.linalg.solve(hessian, gradient.unsqueeze(-1)).squeeze(-1)
            new_params, new_local = self.update(params, local, step)
            new_error = error(new_params, new_local)
            keep = active[:, None]
            params = torch.where(keep, new_params, params)
            local = torch.where(keep, new_local, local)
            stalls = stalls + (active & (0.999 * current < new_error)).long()
            current = torch.where(active, new_error, current)
        return params, local
