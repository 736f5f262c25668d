"""Reader for OpenFace CEN patch-expert files (``cen_patches_*_of.dat``, CE-CLM)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .binary import BinaryReader
from .ccnf import read_view_header

CEN_EXPERT_TYPE = 6
ACTIVATIONS = {0: "sigmoid", 1: "linear", 2: "relu"}


@dataclass
class CENPatchExperts:
    """All CEN experts of one patch scale: V views × L landmarks, E of them non-empty.

    Non-empty experts are stacked expert-major; ``expert_index`` says which one serves
    (view, landmark). All non-empty experts of a file share one layer structure.

    Attributes:
        patch_scale: the scale of the reference shape the experts were trained at.
        view_centers: (V, 3) float64, each view's (pitch, yaw, roll) in radians.
        visibility: (V, L) bool.
        mirror_inds: (L,) int64, each landmark's left/right mirror landmark.
        mirror_views: (V,) int64, each view's mirror view.
        support: (height, width) of the im2col window, pixels (11, 11).
        expert_index: (V, L) int64, index into the stacked experts, -1 for an empty expert.
        activations: per layer, OpenFace's activation code (0 sigmoid, 2 ReLU, other linear).
        weights: per layer, (E, out, in) float32 as stored: row-major, the input's first
            element is the constant 1 and the next h·w are the window read column by column.
        biases: per layer, (E, out) float32.
        confidence: (V, L) float64 (empty experts keep theirs too).
    """

    patch_scale: float
    view_centers: torch.Tensor
    visibility: torch.Tensor
    mirror_inds: torch.Tensor
    mirror_views: torch.Tensor
    support: tuple[int, int]
    expert_index: torch.Tensor
    activations: list[int]
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    confidence: torch.Tensor

    @property
    def num_views(self) -> int:
        return self.visibility.shape[0]

    @property
    def num_points(self) -> int:
        return self.visibility.shape[1]

    @property
    def layer_sizes(self) -> list[int]:
        """[in, hidden..., out] of every non-empty expert."""
        return [self.weights[0].shape[2]] + [w.shape[1] for w in self.weights]


def read_cen(path: str | Path) -> CENPatchExperts:
    """Read one CEN patch-expert file (one patch scale, all views and landmarks)."""
    reader = BinaryReader(path)
    scale, centers, visibility = read_view_header(reader)
    views, points = visibility.shape
    at = reader.offset
    mirror_inds = reader.matrix("mirror landmark indices", 4).reshape(-1).astype(np.int64)
    if mirror_inds.size != points or not ((0 <= mirror_inds) & (mirror_inds < points)).all():
        raise reader.error(f"mirror landmark indices: expected {points} indices in [0, {points})", at)
    at = reader.offset
    mirror_views = reader.matrix("mirror view indices", 4).reshape(-1).astype(np.int64)
    if mirror_views.size != views or not ((0 <= mirror_views) & (mirror_views < views)).all():
        raise reader.error(f"mirror view indices: expected {views} indices in [0, {views})", at)

    expert_index = np.full((views, points), -1, np.int64)
    confidence = np.zeros((views, points))
    structure = None  # (support, activations, [(out, in) per layer]) of the first non-empty expert
    layers: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for v in range(views):
        for i in range(points):
            what = f"expert (view {v}, landmark {i})"
            reader.expect_int32(CEN_EXPERT_TYPE, f"{what} type")
            at = reader.offset
            width = reader.count(f"{what} width", 1, 255)
            height = reader.count(f"{what} height", 1, 255)
            count = reader.count(f"{what} number of layers", 0, 64)
            if count == 0:
                confidence[v, i] = reader.float64(f"{what} confidence")
                continue
            acts, params = [], []
            fan_in = width * height + 1
            for k in range(count):
                lwhat = f"{what} layer {k}"
                acts.append(reader.int32(f"{lwhat} activation"))
                bias = reader.matrix(f"{lwhat} bias", 5, (1, None))
                weight = reader.matrix(f"{lwhat} weights", 5, (bias.shape[1], fan_in))
                params.append((weight, bias[0]))
                fan_in = weight.shape[0]
            if fan_in != 1:
                raise reader.error(f"{what}: expected the last layer to have 1 output, found {fan_in}", at)
            shape = ((height, width), acts, [w.shape for w, _ in params])
            if structure is None:
                structure = shape
            elif shape != structure:
                raise reader.error(f"{what}: expected the layer structure of the first expert {structure}, found {shape}", at)
            confidence[v, i] = reader.float64(f"{what} confidence")
            expert_index[v, i] = len(layers)
            layers.append(params)
    reader.expect_end()
    if structure is None:
        raise reader.error("expected at least one non-empty expert, found none")
    support, activations, _ = structure
    weights = [torch.from_numpy(np.stack([p[k][0] for p in layers])) for k in range(len(activations))]
    biases = [torch.from_numpy(np.stack([p[k][1] for p in layers])) for k in range(len(activations))]
    if not (np.isfinite(confidence).all() and all(bool(torch.isfinite(t).all()) for t in weights + biases)):
        raise reader.error("expected finite weights, biases and confidences, found NaN or infinity")
    return CENPatchExperts(
        patch_scale=scale,
        view_centers=torch.from_numpy(centers),
        visibility=torch.from_numpy(visibility),
        mirror_inds=torch.from_numpy(mirror_inds),
        mirror_views=torch.from_numpy(mirror_views),
        support=support,
        expert_index=torch.from_numpy(expert_index),
        activations=activations,
        weights=weights,
        biases=biases,
        confidence=torch.from_numpy(confidence),
    )
