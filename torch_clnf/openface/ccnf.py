"""Reader for OpenFace CCNF patch-expert files (``ccnf_patches_*.txt``, binary despite the name)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .binary import BinaryReader

CCNF_EXPERT_TYPE = 5
CCNF_NEURON_TYPE = 2


@dataclass
class CCNFPatchExperts:
    """All CCNF experts of one patch scale: V views × L landmarks, up to N neurons each.

    Attributes:
        patch_scale: the scale of the reference shape the experts were trained at.
        view_centers: (V, 3) float64, each view's (pitch, yaw, roll) in radians.
        visibility: (V, L) bool, whether the landmark has an expert in that view.
        support: (height, width) of every neuron's weights, pixels (11, 11).
        window_sizes: the response-window sizes the file has Σ components for.
        sigma_components: window size → (K, win², win²) float64 components of the CCNF Σ.
        num_neurons: (V, L) int64, neurons of each expert (0 for an empty expert).
        neuron_type: (V, L, N) int64 (0 = raw intensities; padding is 0).
        norm_weights, bias, alpha: (V, L, N) float64 (padding has alpha 0).
        weights: (V, L, N, height, width) float64, each neuron's weights, row = y.
        betas: (V, L, K) float64, each expert's weights of the Σ components.
        confidence: (V, L) float64, each expert's patch confidence.
    """

    patch_scale: float
    view_centers: torch.Tensor
    visibility: torch.Tensor
    support: tuple[int, int]
    window_sizes: list[int]
    sigma_components: dict[int, torch.Tensor]
    num_neurons: torch.Tensor
    neuron_type: torch.Tensor
    norm_weights: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor
    weights: torch.Tensor
    betas: torch.Tensor
    confidence: torch.Tensor

    @property
    def num_views(self) -> int:
        return self.visibility.shape[0]

    @property
    def num_points(self) -> int:
        return self.visibility.shape[1]


def read_view_header(reader: BinaryReader) -> tuple[float, np.ndarray, np.ndarray]:
    """The header CCNF and CEN files share: scale, view centres (radians), visibilities (V, L)."""
    at = reader.offset
    scale = reader.float64("patch scale")
    if not (math.isfinite(scale) and scale > 0):
        raise reader.error(f"expected a positive patch scale, found {scale}", at)
    views = reader.count("number of views", 1, 64)
    centers = np.stack([reader.matrix(f"view {v} centre", 6, (3, 1))[:, 0] for v in range(views)])
    first = reader.matrix("view 0 visibility", 4, (None, 1))
    points = first.shape[0]
    if points == 0:
        raise reader.error("view 0 visibility: expected at least one landmark")
    vis = [first[:, 0]] + [reader.matrix(f"view {v} visibility", 4, (points, 1))[:, 0] for v in range(1, views)]
    return scale, np.deg2rad(centers), np.stack(vis) != 0


def read_ccnf(path: str | Path) -> CCNFPatchExperts:
    """Read one CCNF patch-expert file (one patch scale, all views and landmarks)."""
    reader = BinaryReader(path)
    scale, centers, visibility = read_view_header(reader)
    views, points = visibility.shape

    window_sizes: list[int] = []
    sigma_components: dict[int, torch.Tensor] = {}
    num_betas = 0
    for w in range(reader.count("number of window sizes", 0, 64)):
        at = reader.offset
        win = reader.count(f"window size {w}", 1, 255)
        if win in sigma_components:
            raise reader.error(f"window size {win} appears twice", at)
        count = reader.count(f"number of sigma components of window {win}", 0, 64)
        if w == 0:
            num_betas = count
        elif count != num_betas:
            raise reader.error(f"expected {num_betas} sigma components for window {win} (as for the first window), found {count}", at)
        mats = [reader.matrix(f"sigma component {k} of window {win}", 5, (win * win, win * win)) for k in range(count)]
        window_sizes.append(win)
        sigma_components[win] = torch.from_numpy(np.stack(mats).astype(np.float64)) if mats else torch.zeros(0, win * win, win * win, dtype=torch.float64)

    experts = []
    support = None
    for v in range(views):
        for i in range(points):
            what = f"expert (view {v}, landmark {i})"
            reader.expect_int32(CCNF_EXPERT_TYPE, f"{what} type")
            at = reader.offset
            width = reader.count(f"{what} width", 1, 255)
            height = reader.count(f"{what} height", 1, 255)
            count = reader.count(f"{what} number of neurons", 0, 4096)
            if count == 0:
                reader.int32(f"{what} empty-expert marker")
                experts.append(None)
                continue
            if support is None:
                support = (height, width)
            elif support != (height, width):
                raise reader.error(f"{what}: expected support {support[1]}x{support[0]} like the other experts, found {width}x{height}", at)
            neurons = []
            for k in range(count):
                nwhat = f"{what} neuron {k}"
                reader.expect_int32(CCNF_NEURON_TYPE, f"{nwhat} type")
                ntype = reader.int32(f"{nwhat} neuron kind")
                norm_w = reader.float64(f"{nwhat} norm weight")
                bias = reader.float64(f"{nwhat} bias")
                alpha = reader.float64(f"{nwhat} alpha")
                weights = reader.matrix(f"{nwhat} weights", None, (height, width))
                neurons.append((ntype, norm_w, bias, alpha, weights.astype(np.float64)))
            betas = [reader.float64(f"{what} beta {k}") for k in range(num_betas)]
            confidence = reader.float64(f"{what} confidence")
            experts.append((neurons, betas, confidence))
    reader.expect_end()
    if support is None:
        raise reader.error("expected at least one non-empty expert, found none")

    max_neurons = max(len(e[0]) for e in experts if e is not None)
    shape = (views, points, max_neurons)
    num_neurons = np.zeros((views, points), np.int64)
    neuron_type = np.zeros(shape, np.int64)
    norm_weights, bias, alpha = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    weights = np.zeros(shape + support)
    betas = np.zeros((views, points, num_betas))
    confidence = np.zeros((views, points))
    for index, expert in enumerate(experts):
        if expert is None:
            continue
        v, i = divmod(index, points)
        neurons, expert_betas, confidence[v, i] = expert
        num_neurons[v, i] = len(neurons)
        for k, (ntype, norm_w, b, a, w) in enumerate(neurons):
            neuron_type[v, i, k], norm_weights[v, i, k], bias[v, i, k], alpha[v, i, k] = ntype, norm_w, b, a
            weights[v, i, k] = w
        betas[v, i] = expert_betas
    packed = [norm_weights, bias, alpha, weights, betas, confidence] + [c.numpy() for c in sigma_components.values()]
    if not all(np.isfinite(a).all() for a in packed):
        raise reader.error("expected finite weights, Σ components, betas and confidences, found NaN or infinity")
    return CCNFPatchExperts(
        patch_scale=scale,
        view_centers=torch.from_numpy(centers),
        visibility=torch.from_numpy(visibility),
        support=support,
        window_sizes=window_sizes,
        sigma_components=sigma_components,
        num_neurons=torch.from_numpy(num_neurons),
        neuron_type=torch.from_numpy(neuron_type),
        norm_weights=torch.from_numpy(norm_weights),
        bias=torch.from_numpy(bias),
        alpha=torch.from_numpy(alpha),
        weights=torch.from_numpy(weights),
        betas=torch.from_numpy(betas),
        confidence=torch.from_numpy(confidence),
    )
