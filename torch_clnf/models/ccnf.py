"""CCNF patch experts (CLNF) as one batched nn.Module per patch scale."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..openface import CCNFPatchExperts
from .sync import static_graph, syncs_cheaply
from .windows import (PatchResponse, check_inputs, correlation, normalise, per_view, response_window,
                      window_statistics, zero_mean)

# OpenFace skips neurons whose alpha is this small.
MIN_ALPHA = 1e-4
# each of the 68 landmarks' left/right counterpart (jaw, brows, nose, eyes, mouth)
MIRROR_68 = (tuple(range(16, -1, -1)) + tuple(range(26, 16, -1)) + (27, 28, 29, 30, 35, 34, 33, 32, 31)
             + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40) + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)
             + (64, 63, 62, 61, 60, 67, 66, 65))


# relative difference of two views' filters (as scaled by their norm weights) that counts as the
# same: OpenFace's mirrored views differ by float64 rounding of those products (2e-14)
MIRROR_TOLERANCE = 1e-12


def mirrored_views(data: CCNFPatchExperts) -> list[int]:
    """Per view, the view whose experts are its own mirrored (its filters flipped left to right on
    the counterpart landmarks, to float64 rounding; the same biases, alphas, betas and visibility,
    so Σ the same too, its components being symmetric under the flip), or the view itself.
    OpenFace's 68-point CCNF files hold views of opposite yaw so; other files get no pairs."""
    views, points = data.alpha.shape[:2]
    pairs = list(range(views))
    if points != len(MIRROR_68):
        return pairs
    mirror = list(MIRROR_68)
    for win, comps in data.sigma_components.items():
        flip = torch.arange(win * win).view(win, win).flip(-1).flatten()
        if not torch.equal(comps[:, flip][:, :, flip], comps):
            return pairs
    scaled = data.weights * data.norm_weights[..., None, None]          # the filters as applied
    tables = (data.bias, data.alpha, data.betas, data.visibility, data.num_neurons)
    for a in range(views):
        for b in range(views):
            if a != b and pairs[a] == a and pairs[b] == b \
                    and bool(((scaled[a] - scaled[b][mirror].flip(-1)).abs() <= MIRROR_TOLERANCE * scaled.abs().max()).all()) \
                    and all(torch.equal(t[a], t[b][mirror]) for t in tables):
                pairs[a] = b                                  # computed as its mirror view, b computed as itself
                break
    return pairs


class CCNFTables(NamedTuple):
    """Every view's CCNF experts for one response-window size: the tensors a compiled response
    frame takes as inputs (V views, L landmarks, N neurons, P = win² map pixels).

    Attributes:
        weights: (V, L, N, h, w) zero-mean filters; bias, alpha: (V, L, N).
        sigmas: (V, L, P, P) the CCNF Σ; visible: (V, L) bool; confidence: (V, L).
        view_centers: (V, 3) pitch, yaw, roll of each view, radians.
        view_member: (V,) int64, the member model of each view (0: one model, see
            :class:`~torch_clnf.models.stacking.StackedExperts`).
    """

    weights: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor
    sigmas: torch.Tensor
    visible: torch.Tensor
    confidence: torch.Tensor
    view_centers: torch.Tensor
    view_member: torch.Tensor


def ccnf_maps_per_face(areas: torch.Tensor, view: torch.Tensor, tables: CCNFTables,
                       support: tuple[int, int]) -> torch.Tensor:
    """CCNF response maps, each face with its own view's experts gathered from ``tables``: no host
    read, so a compiled graph (:class:`CCNFExperts` groups faces by view on the host instead).

    Every face's landmarks are groups of one grouped convolution, and each face's Σ is applied as a
    sum over products (which a compiler fuses, reading Σ where it lies). Equal to
    :meth:`CCNFExperts.forward` up to float rounding.

    Args:
        areas: (B, L, H, W) grey-level areas of interest; view: (B,) int64.
    Returns:
        (B, L, win, win) maps.
    """
    batch, points, height, width = areas.shape
    weights = tables.weights[view]                                                # (B, L, N, h, w)
    neurons, h, w = weights.shape[2:]
    stats = window_statistics(areas, support)
    z = correlation(stats.centred.reshape(1, batch * points, height, width), weights.reshape(batch * points, neurons, h, w),
                    channels_last=True)
    z = normalise(stats, z.view(batch, points, neurons, *z.shape[-2:]), tables.bias[view])     # (B, L, N, win, win)
    summed = (2 * tables.alpha[view][..., None] * torch.sigmoid(z.flatten(-2))).sum(-2)         # (B, L, P)
    maps = (tables.sigmas[view] * summed[:, :, None, :]).sum(-1)                                # (B, L, P)
    maps = maps - maps.amin(-1, keepdim=True).clamp(max=0)
    maps = maps * tables.visible[view][..., None].to(maps.dtype)
    return maps.view(batch, points, *z.shape[-2:])


class CCNFExperts(nn.Module):
    """All CCNF experts of one patch scale: areas → response maps for all landmarks at once.

    For each landmark, every neuron takes the contrast-normalised 11×11 window at each position,
    ``2α · sigmoid(norm_weight · ⟨w, window⟩ + bias)`` is summed over neurons, and the map is
    multiplied by the CCNF Σ of that window size, ``(2 (Σα I + Σ_k β_k S_k))⁻¹``; a map with
    negative values is shifted so its minimum is 0.

    Example:
        >>> experts = CCNFExperts(read_ccnf("patch_experts/ccnf_patches_0.25_general.txt"))
        >>> out = experts(torch.rand(2, 68, 21, 21) * 255, torch.tensor([0, 1]))
        >>> out.maps.shape, out.visible.shape
        (torch.Size([2, 68, 11, 11]), torch.Size([2, 68]))
    """

    weights: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor
    alpha_sum: torch.Tensor
    betas: torch.Tensor
    visible: torch.Tensor
    confidence: torch.Tensor
    view_centers: torch.Tensor

    def __init__(self, data: CCNFPatchExperts, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if bool((data.neuron_type != 0).any()):
            raise ValueError("CCNFExperts supports OpenFace's intensity neurons (kind 0) only")
        self.patch_scale = data.patch_scale
        self.support = tuple(data.support)
        views, points, neurons = data.alpha.shape
        scaled = data.weights.double() * data.norm_weights[..., None, None]
        self.register_buffer("weights", zero_mean(scaled).to(dtype))              # (V, L, N, h, w), zero-mean filters
        self.register_buffer("bias", data.bias.to(dtype))                          # (V, L, N)
        used = torch.where(data.alpha > MIN_ALPHA, data.alpha, torch.zeros_like(data.alpha))
        self.register_buffer("alpha", used.to(dtype))                               # (V, L, N)
        self.register_buffer("alpha_sum", data.alpha.sum(-1).to(dtype))            # (V, L)
        self.register_buffer("betas", data.betas.to(dtype))                         # (V, L, K)
        self.register_buffer("visible", data.visibility & (data.num_neurons > 0))   # (V, L)
        self.register_buffer("confidence", data.confidence.to(dtype))               # (V, L)
        self.register_buffer("view_centers", data.view_centers.to(dtype))           # (V, 3)
        self.window_sizes = list(data.window_sizes)
        pairs = mirrored_views(data)
        self._computed_as = pairs                                                                   # on the host
        self.register_buffer("computed_as", torch.tensor(pairs), persistent=False)                 # (V,)
        self.register_buffer("flipped", torch.tensor([v != w for v, w in enumerate(pairs)]), persistent=False)
        self.register_buffer("mirror", torch.tensor(MIRROR_68 if any(self.flipped) else (), dtype=torch.long),
                             persistent=False)
        for win, comps in data.sigma_components.items():
            self.register_buffer(f"sigma_components_{win}", comps.to(dtype))       # (K, win², win²)
        self._sigmas: dict[tuple, torch.Tensor] = {}

    @property
    def num_views(self) -> int:
        return self.visible.shape[0]

    @property
    def num_points(self) -> int:
        return self.visible.shape[1]

    def sigma(self, window: int, view: int) -> torch.Tensor:
        """(L, win², win²) CCNF Σ of a view's experts for a window size.

        Built on first use of that (window, view), in float64 on the CPU, by Cholesky (the
        precision ``2 (Σα I + Σ_k β_k S_k)`` is symmetric positive definite), then kept.
        """
        key = (window, view, self.weights.device, self.weights.dtype)
        if key not in self._sigmas:
            size = window * window
            alpha_sum = self.alpha_sum[view].cpu().double()                          # (L,)
            eye = torch.eye(size, dtype=torch.float64)
            precision = alpha_sum[:, None, None] * eye
            comps = getattr(self, f"sigma_components_{window}", None)
            if comps is not None and comps.shape[0] == self.betas.shape[-1] and comps.shape[0] > 0:
                precision = precision + torch.einsum("lk,kpq->lpq", self.betas[view].cpu().double(), comps.cpu().double())
            empty = alpha_sum == 0
            precision = torch.where(empty[:, None, None], eye, 2 * precision)
            sigma = torch.cholesky_inverse(torch.linalg.cholesky(precision)).masked_fill(empty[:, None, None], 0)
            sigma = sigma.to(self.weights.device, self.weights.dtype)
            if torch.compiler.is_compiling():          # (made of traced tensors: not kept)
                return sigma
            self._sigmas[key] = sigma
        return self._sigmas[key]

    def sigmas(self, window: int) -> torch.Tensor:
        """(L, V, win², win²) every view's Σ (:meth:`sigma`) for a window size, landmark-major, kept."""
        key = (window, "views", self.weights.device, self.weights.dtype)
        if key not in self._sigmas:
            sigmas = torch.stack([self.sigma(window, v) for v in range(self.num_views)], 1)
            if torch.compiler.is_compiling():
                return sigmas
            self._sigmas[key] = sigmas
        return self._sigmas[key]

    def tables(self, window: int) -> CCNFTables:
        """Every view's experts and Σ for a response-window size, as :class:`CCNFTables` (kept)."""
        key = (window, "tables", self.weights.device, self.weights.dtype)
        if key not in self._sigmas:
            sigmas = torch.stack([self.sigma(window, v) for v in range(self.num_views)])
            member = torch.zeros(self.num_views, dtype=torch.long, device=self.weights.device)
            tables = CCNFTables(self.weights, self.bias, self.alpha, sigmas, self.visible, self.confidence,
                                self.view_centers, member)
            if torch.compiler.is_compiling():
                return tables
            self._sigmas[key] = tables
        return self._sigmas[key]

    def _apply(self, fn, recurse=True):  # new device or dtype: drop the Σ cache
        self._sigmas = {}
        return super()._apply(fn, recurse)

    def forward(self, areas: torch.Tensor, view: torch.Tensor, landmarks: torch.Tensor | None = None) -> PatchResponse:
        """Response maps for a batch of faces.

        Args:
            areas: (B, L, H, W) grey-level areas of interest, one per landmark, H = W = win + 10.
            view: (B,) int64, each face's view index.
            landmarks: (L,) indices of the landmarks the areas belong to (default all, in order).
        Returns:
            PatchResponse: maps (B, L, win, win), visible (B, L).
        """
        index = check_inputs(areas, view, self.num_points, self.num_views, landmarks)
        win = response_window(areas, self.support)
        chosen = slice(None) if landmarks is None else index                     # all: views, not copies

        def compute(faces: torch.Tensor, v: int) -> torch.Tensor:
            stats = window_statistics(faces, self.support)
            z = normalise(stats, correlation(stats.centred, self.weights[v, chosen], channels_last=True),
                          self.bias[v, chosen])                                   # (F, L, N, win, win)
            summed = torch.einsum("ln,flnp->flp", 2 * self.alpha[v, chosen], torch.sigmoid(z.flatten(-2)))
            maps = torch.einsum("lpq,flq->flp", self.sigma(win, v)[chosen], summed)
            maps = maps - maps.amin(-1, keepdim=True).clamp(max=0)
            return maps * self.visible[v, chosen, None].to(maps.dtype)

        def compute_per_face(faces: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
            # every view's neurons on every face (one grouped convolution; gathering each face's weights,
            # windows or Σ costs more), each face's own view then picked by one-hot matmuls, and every
            # view's Σ applied to the picked sums (one batched matmul) before picking again
            def by_landmark(table: torch.Tensor) -> torch.Tensor:                # (V, L, ...) → (L, V, ...)
                return (table if landmarks is None else table[:, index]).transpose(0, 1)

            weights = by_landmark(self.weights)                                     # (L, V, N, h, w)
            views_count, neurons = weights.shape[1:3]
            pick = (views[:, None] == torch.arange(views_count, device=views.device)).to(faces.dtype)[:, None, None]

            def picked(table: torch.Tensor) -> torch.Tensor:                        # (F or 1, L, V, X) → (F, L, X)
                return (pick @ table).squeeze(2)

            stats = window_statistics(faces, self.support)
            z = correlation(stats.centred, weights.flatten(1, 2))                     # (F, L, V·N, win, win)
            z = picked(z.unflatten(2, (views_count, neurons)).flatten(3)).unflatten(-1, (neurons, win, win))
            z = normalise(stats, z, picked(by_landmark(self.bias)))                   # (F, L, N, win, win)
            summed = (2 * picked(by_landmark(self.alpha))[..., None] * torch.sigmoid(z.flatten(-2))).sum(-2)   # (F, L, P)
            sigmas = self.sigmas(win) if landmarks is None else self.sigmas(win)[index]         # (L, V, P, P)
            every = (summed.transpose(0, 1) @ sigmas.flatten(1, 2).transpose(1, 2)).unflatten(-1, sigmas.shape[1:3])
            maps = (pick[:, 0] @ every).squeeze(2).transpose(0, 1)                    # (F, L, P)
            maps = maps - maps.amin(-1, keepdim=True).clamp(max=0)
            visible = self.visible[views] if landmarks is None else self.visible[views][:, index]
            return maps * visible[..., None].to(maps.dtype)

        flip = self._mirrored(view, landmarks)
        if flip is not None:        # faces in mirrored views: their areas flipped, computed in one view
            flip = flip.view(-1, 1, 1, 1)
            areas = torch.where(flip, areas[:, self.mirror].flip(-1), areas)
            maps = per_view(self.computed_as[view], areas, (areas.shape[0], len(index), win * win), compute,
                            compute_per_face).view(areas.shape[0], len(index), win, win)
            maps = torch.where(flip, maps[:, self.mirror].flip(-1), maps)
        else:
            maps = per_view(view, areas, (areas.shape[0], len(index), win * win), compute, compute_per_face)
        return PatchResponse(maps.reshape(areas.shape[0], len(index), win, win), self.visible[view][:, chosen])

    def _mirrored(self, view: torch.Tensor, landmarks: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) bool, the faces to compute in their view's mirror view (:func:`mirrored_views`), where
        that leaves fewer views to compute (each costs a convolution and a Σ product of its own);
        None where it would not (one face, one view, or no mirrored pair both present), for a subset of
        landmarks, and in a static graph."""
        if view.shape[0] < 2 or not len(self.mirror) or landmarks is not None or static_graph() \
                or not syncs_cheaply(view):
            return None
        present = [v for v, count in enumerate(torch.bincount(view, minlength=self.num_views).tolist()) if count]
        if len({self._computed_as[v] for v in present}) >= len(present):
            return None
        return self.flipped[view]
