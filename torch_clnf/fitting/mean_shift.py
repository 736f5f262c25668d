"""KDE mean-shift over response maps, batched over faces and landmarks."""
from __future__ import annotations

import torch

from ..models.constants import constant


Sigma = float | torch.Tensor        # one KDE standard deviation, or (B,) one per face


def _axis_kernel(positions: torch.Tensor, size: int, a: torch.Tensor) -> torch.Tensor:
    """(..., ) positions → (..., size) ``exp(a (position − k)²)`` for k = 0 … size − 1."""
    k = _steps(size, positions)
    return torch.exp(a * (positions.unsqueeze(-1) - k).square())


def _coefficient(sigma: Sigma, like: torch.Tensor, dims: int) -> torch.Tensor:
    """The KDE's ``−1 / (2 σ²)`` in ``like``'s dtype: a 0-dim tensor, or per face (B, 1, …) with
    ``dims`` trailing ones (computed in ``sigma``'s dtype, float64 as a Python number would be)."""
    if not isinstance(sigma, torch.Tensor):
        return constant(-0.5 / (sigma * sigma), like)
    return (-0.5 / (sigma * sigma)).to(like.dtype).reshape(-1, *(1,) * dims)


def mean_shift(maps: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, sigma: Sigma, step: float = 0.1) -> torch.Tensor:
    """Mean-shift vectors of response maps under a Gaussian KDE centred at (dx, dy).

    As OpenFace, the position is first clamped to the map; the KDE is centred on it snapped to a
    ``step`` grid (OpenFace precomputes its kernels on that grid), and the shift is measured from
    the clamped (not snapped) position.

    Args:
        maps: (B, n, w, w) response maps, row = y.
        dx, dy: (B, n) current landmark positions in map coordinates (pixels, 0 = first column/row).
        sigma: KDE standard deviation, map pixels; or (B,), one per face (float64 where the
            device has it: the KDE's coefficient is computed in its dtype).
    Returns:
        (B, n, 2) shifts (x, y) in map pixels; 0 where a map is all zero.
    """
    return mean_shift_at(maps, torch.stack([dx, dy], -1), sigma, step)


def mean_shift_at(maps: torch.Tensor, position: torch.Tensor, sigma: Sigma, step: float = 0.1,
                  windows: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`mean_shift` at (B, n, 2) positions (x, y), map pixels.

    ``windows`` (B,): each face's own map size, its maps zero-padded after row and column
    ``window − 1`` to the batch's size (the padding adds exact zeros to every sum)."""
    size = maps.shape[-1]
    if windows is None:
        position = position.clamp(0.0, size - step)                                   # (B, n, 2) clamped
    else:
        position = position.clamp(min=0.0).minimum((windows - step).to(position.dtype)[:, None, None])
    step_size = constant(step, position)
    kernels = _axis_kernel(torch.floor(position / step_size + constant(0.5, position)) * step_size, size,
                           _coefficient(sigma, position, 3))                          # (B, n, 2, w)
    # the separable KDE as two small matmuls: [Σ, Σ·col; Σ·row, ·] = [ky; ky·k] · map · [kx; kx·k]ᵀ
    # (stacked rather than broadcast, and with the map transposed: no copies of strided operands)
    k = _steps(size, maps)
    x_kernels, y_kernels = torch.stack([kernels, kernels * k], -2).unbind(2)         # (B, n, 2, w) each
    sums = (y_kernels @ (x_kernels @ maps.mT).mT).flatten(-2)                        # (B, n, 4): Σ, Σ·col, Σ·row, ·
    total = sums[..., :1]
    zero = constant(0.0, total)
    return torch.where(total > zero, sums[..., 1:3] / total - position, zero)


def log_likelihood(maps: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, visible: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """Mean over visible landmarks of ``log(Σ map · KDE + 1e-8)``, the KDE at the exact (dx, dy).

    Args:
        maps: (B, n, w, w); dx, dy: (B, n); visible: (B, n) bool; sigma: a number or (B,).
    Returns:
        (B,) OpenFace's model likelihood.
    """
    size = maps.shape[-1]
    a = _coefficient(sigma, maps, 2)
    kde = _axis_kernel(dy, size, a)[..., :, None] * _axis_kernel(dx, size, a)[..., None, :]
    per_landmark = torch.log((maps * kde).sum((-2, -1)) + 1e-8) * visible
    return per_landmark.sum(1) / visible.sum(1).clamp(min=1)


_grids: dict[tuple, torch.Tensor] = {}


def _steps(size: int, like: torch.Tensor) -> torch.Tensor:
    """(size,) 0 … size − 1 on ``like``'s device and in its dtype, made once."""
    key = (size, like.device, like.dtype)
    if key not in _grids:
        _grids[key] = torch.arange(size, dtype=like.dtype, device=like.device)
    return _grids[key]
