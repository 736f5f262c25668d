"""KDE mean-shift over response maps, batched over faces and landmarks."""
from __future__ import annotations

import torch

from ..models.constants import constant
from ..models.sync import static_graph


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
                  windows: torch.Tensor | None = None, table: "KernelTable | None" = None) -> torch.Tensor:
    """:func:`mean_shift` at (B, n, 2) positions (x, y), map pixels.

    ``windows`` (B,): each face's own map size, its maps zero-padded after row and column
    ``window − 1`` to the batch's size (the padding adds exact zeros to every sum). ``table``:
    :func:`kernel_table` of the maps' size, ``sigma`` and ``step`` when the caller keeps one."""
    size = maps.shape[-1]
    if windows is None:
        position = position.clamp(0.0, size - step)                                   # (B, n, 2) clamped
    else:
        position = position.clamp(min=0.0).minimum((windows - step).to(position.dtype)[:, None, None])
    table = table or kernel_table(size, sigma, step, position)
    snapped = torch.floor(position / table.step + constant(0.5, position)).long()     # (B, n, 2) grid indices,
    snapped = snapped.clamp(0, table.size - 1)               # (a NaN position, a diverged face's, to any of them)
    # the separable KDE as two small matmuls: [Σ, Σ·col; Σ·row, ·] = [ky; ky·k] · map · [kx, kx·k]
    sums = (table.rows(snapped.select(-1, 1)) @ (maps @ table.columns(snapped.select(-1, 0)))).flatten(-2)
    total = sums[..., :1]                                                            # (B, n, 4): Σ, Σ·col, Σ·row, ·
    zero = constant(0.0, total)
    return torch.where(total > zero, sums[..., 1:3] / total - position, zero)


class KernelTable:
    """The KDE kernels of :func:`mean_shift_at` at every position of its ``step`` grid, as OpenFace
    precomputes them: one lookup per landmark instead of a dozen operations.

    Attributes:
        step: the grid step, a 0-dim tensor in the positions' dtype.
        by_row: (G, 2, w), or (B, G, 2, w) per face: ``[K, K·k]`` for the grid position
            ``g · step``, ``K = exp(a (g · step − k)²)``, ``k = 0 … w − 1``;
            by_column: the same, (G, w, 2) or (B, G, w, 2).
        faces: (B, 1) long face numbers where the tables are per face, else None.
        size: G, the grid positions.
    """

    def __init__(self, size: int, sigma: Sigma, step: float, like: torch.Tensor) -> None:
        self.step = constant(step, like)
        self.size = int(round(size / step)) + 2
        grid = torch.arange(self.size, dtype=like.dtype, device=like.device) * self.step                    # (G,)
        per_face = isinstance(sigma, torch.Tensor)
        kernels = _axis_kernel(grid if not per_face else grid.expand(sigma.shape[0], -1), size,
                               _coefficient(sigma, like, 2))                                    # ([B,] G, w)
        self.by_row = torch.stack([kernels, kernels * _steps(size, like)], -2)                  # ([B,] G, 2, w)
        self.by_column = self.by_row.mT.contiguous()
        self.faces = torch.arange(sigma.shape[0], device=like.device)[:, None] if per_face else None

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """(B, n) grid indices → (B, n, 2, w) kernels."""
        return self.by_row[index] if self.faces is None else self.by_row[self.faces, index]

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """(B, n) grid indices → (B, n, w, 2) kernels."""
        return self.by_column[index] if self.faces is None else self.by_column[self.faces, index]


_tables: dict[tuple, KernelTable] = {}


def kernel_table(size: int, sigma: Sigma, step: float, like: torch.Tensor) -> KernelTable:
    """The :class:`KernelTable` of maps of ``size``, made once per process for a number ``sigma``
    (per call for per-face sigmas, in a static graph and while compiling)."""
    if isinstance(sigma, torch.Tensor) or static_graph() or torch.compiler.is_compiling():   # (traced: not kept)
        return KernelTable(size, sigma, step, like)
    key = (size, sigma, step, like.dtype, like.device)
    if key not in _tables:
        _tables[key] = KernelTable(size, sigma, step, like)
    return _tables[key]


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
        grid = torch.arange(size, dtype=like.dtype, device=like.device)
        if torch.compiler.is_compiling():              # (a traced tensor: not kept)
            return grid
        _grids[key] = grid
    return _grids[key]
