"""Reader for OpenFace's CNN detection validator (``detection_validation/validator_cnn*.txt``, binary).

Layout (int32 and float64 little endian, matrices as OpenCV ``ReadMatBin``): int32 validator
type (3 = CNN), int32 view count V, V orientation matrices (3×1 float64, degrees), then per
view: the mean and standard-deviation images of the warped face (1×P float64), int32 layer
count, the layers (int32 type, then type-specific data), and the view's piecewise affine warp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .binary import BinaryReader
from .cnn import CNNLayer, read_conv, read_fully_connected

CNN_VALIDATOR_TYPE = 3
CONV, MAX_POOL, FULLY_CONNECTED, RELU, SIGMOID = 0, 1, 2, 3, 4
LAYER_NAMES = {CONV: "conv", MAX_POOL: "max_pool", FULLY_CONNECTED: "fully_connected", RELU: "relu", SIGMOID: "sigmoid"}


@dataclass
class PiecewiseAffineWarp:
    """OpenFace's PAW of one view: the warp of a face onto the view's reference shape.

    Attributes:
        min_x, min_y: the reference frame's coordinates of warped pixel (0, 0).
        destination: (L, 2) float64, the reference shape (x, y).
        triangles: (T, 3) int64, landmark indices of each triangle.
        triangle_id: (H, W) int64, the triangle each warped pixel lies in, -1 outside the face.
        mask: (H, W) bool, the warped pixels that lie on the face (P of them).
        alpha, beta: (T, 3) float64, each triangle's barycentric coefficients in the reference
            frame: ``α = alpha · (1, x, y)``, ``β = beta · (1, x, y)``.
    """

    min_x: float
    min_y: float
    destination: np.ndarray
    triangles: np.ndarray
    triangle_id: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray

    @property
    def num_pixels(self) -> int:
        return int(self.mask.sum())


@dataclass
class ValidatorView:
    """The validator of one head orientation.

    Attributes:
        orientation: (3,) float64, (rx, ry, rz) in radians.
        mean, std: (P,) float64, the global normalisation of the warped face's P masked pixels,
            in OpenFace's order: the mask read column by column.
        layers: the CNN, input (1, H, W) the normalised warped face (0 off the mask), output
            the scores of ``bins`` certainty bins.
        warp: the piecewise affine warp.
    """

    orientation: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    layers: list[CNNLayer]
    warp: PiecewiseAffineWarp

    @property
    def bins(self) -> int:
        return next(layer.bias.shape[0] for layer in reversed(self.layers) if layer.kind == "fully_connected")


@dataclass
class DetectionValidatorData:
    """All views of OpenFace's CNN detection validator."""

    views: list[ValidatorView]

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def orientations(self) -> np.ndarray:
        """(V, 3) float64 radians."""
        return np.stack([v.orientation for v in self.views])


def _check_network(reader: BinaryReader, layers: list[CNNLayer], size: tuple[int, int], what: str, at: int) -> None:
    """Raise unless the layers take a (1, H, W) map to one vector of bins as OpenFace would."""
    maps, (h, w), flat = 1, size, False
    last_fc_input_maps = None
    for n, layer in enumerate(layers):
        where = f"{what} layer {n} ({layer.kind})"
        if layer.kind == "conv":
            out, maps_in, kh, kw = layer.weight.shape
            if flat or maps_in != maps or kh > h or kw > w:
                shape = "a flat vector" if flat else f"{maps} maps of {h}x{w}"
                raise reader.error(f"{where}: expected {maps_in} input maps of at least {kh}x{kw}, "
                                   f"the network gives {shape}", at)
            maps, h, w = out, h - kh + 1, w - kw + 1
        elif layer.kind == "max_pool":
            if flat:
                raise reader.error(f"{where}: expected feature maps, the network gives a flat vector", at)
            if h < 2 or w < 2:
                raise reader.error(f"{where}: expected maps of at least 2x2, the network gives {h}x{w}", at)
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1     # OpenFace's round((n - 2) / 2) + 1
        elif layer.kind == "fully_connected":
            features = maps * h * w
            if layer.weight.shape[0] != features:
                raise reader.error(f"{where}: expected {features} inputs, found weights for {layer.weight.shape[0]}", at)
            if not flat and maps == 1 and w != 1:
                raise reader.error(f"{where}: a fully connected layer on a single {h}x{w} map is not supported", at)
            last_fc_input_maps = maps if not flat else 1
            maps, h, w, flat = 1, layer.weight.shape[1], 1, True
    if last_fc_input_maps is None:
        raise reader.error(f"{what}: expected the network to end in a fully connected layer, found none", at)
    if last_fc_input_maps != 1:
        raise reader.error(f"{what}: the last fully connected layer must follow another one "
                           "(OpenFace reads the bins from a row vector)", at)


def _read_warp(reader: BinaryReader, what: str) -> PiecewiseAffineWarp:
    at = reader.offset
    pixels = reader.count(f"{what} number of pixels", 1, 1 << 24)
    min_x = reader.float64(f"{what} min x")
    min_y = reader.float64(f"{what} min y")
    if not (math.isfinite(min_x) and math.isfinite(min_y)):
        raise reader.error(f"{what}: expected finite min x and min y, found {min_x}, {min_y}", at)
    destination = reader.matrix(f"{what} reference shape", 6, (None, 1))[:, 0]
    if destination.size == 0 or destination.size % 2:
        raise reader.error(f"{what}: expected 2·L reference shape values, found {destination.size}", at)
    points = destination.size // 2
    tri_at = reader.offset
    triangles = reader.matrix(f"{what} triangulation", 4, (None, 3)).astype(np.int64)
    if len(triangles) == 0 or triangles.min() < 0 or triangles.max() >= points:
        raise reader.error(f"{what} triangulation: expected triangles of landmark indices in [0, {points})", tri_at)
    id_at = reader.offset
    triangle_id = reader.matrix(f"{what} triangle index", 4).astype(np.int64)
    if triangle_id.size == 0 or triangle_id.min() < -1 or triangle_id.max() >= len(triangles):
        raise reader.error(f"{what} triangle index: expected values in [-1, {len(triangles)})", id_at)
    mask_at = reader.offset
    mask = reader.matrix(f"{what} pixel mask", None, triangle_id.shape) != 0
    if mask.sum() != pixels:
        raise reader.error(f"{what} pixel mask: expected {pixels} pixels on the face, found {int(mask.sum())}", mask_at)
    if (triangle_id[mask] < 0).any():
        raise reader.error(f"{what} pixel mask: a masked pixel has no triangle", mask_at)
    alpha = reader.matrix(f"{what} alpha", 6, (len(triangles), 3))
    beta = reader.matrix(f"{what} beta", 6, (len(triangles), 3))
    if not (np.isfinite(destination).all() and np.isfinite(alpha).all() and np.isfinite(beta).all()):
        raise reader.error(f"{what}: expected finite reference shape and coefficients, found NaN or infinity", at)
    return PiecewiseAffineWarp(min_x, min_y, np.stack([destination[:points], destination[points:]], 1),
                               triangles, triangle_id, mask, alpha, beta)


def _read_view(reader: BinaryReader, v: int, orientation: np.ndarray) -> ValidatorView:
    what = f"view {v}"
    norm_at = reader.offset
    mean = reader.matrix(f"{what} mean image", 6).reshape(-1)
    std = reader.matrix(f"{what} standard deviation image", 6).reshape(-1)
    layers_at = reader.offset
    layers = []
    for n in range(reader.count(f"{what} number of layers", 1, 1024)):
        at = reader.offset
        kind = reader.int32(f"{what} layer {n} type")
        if kind == CONV:
            layers.append(read_conv(reader, f"{what} layer {n} (conv)"))
        elif kind == FULLY_CONNECTED:
            layers.append(read_fully_connected(reader, f"{what} layer {n} (fully connected)"))
        elif kind in LAYER_NAMES:
            layers.append(CNNLayer(LAYER_NAMES[kind]))
        else:
            raise reader.error(f"{what} layer {n}: expected a layer type in 0..4, found {kind}", at)
    warp = _read_warp(reader, f"{what} warp")
    pixels = warp.num_pixels
    if mean.size != pixels or std.size != pixels:
        raise reader.error(f"{what}: expected mean and standard deviation images of {pixels} pixels (the warp's), "
                           f"found {mean.size} and {std.size}", norm_at)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std == 0).any():
        raise reader.error(f"{what}: expected finite means and non-zero finite standard deviations", norm_at)
    for layer in layers:
        if layer.weight is not None and not (np.isfinite(layer.weight).all() and np.isfinite(layer.bias).all()):
            raise reader.error(f"{what}: expected finite CNN weights, found NaN or infinity", layers_at)
    _check_network(reader, layers, warp.mask.shape, what, layers_at)
    return ValidatorView(orientation, mean, std, layers, warp)


def read_validator(path: str | Path) -> DetectionValidatorData:
    """Read OpenFace's CNN detection validator (all views)."""
    reader = BinaryReader(path)
    reader.expect_int32(CNN_VALIDATOR_TYPE, "validator type (3 = CNN; older validators are not supported)")
    views = reader.count("number of views", 1, 64)
    orientations = []
    for v in range(views):
        at = reader.offset
        degrees = reader.matrix(f"view {v} orientation", 6).reshape(-1)
        if degrees.size != 3 or not np.isfinite(degrees).all():
            raise reader.error(f"view {v} orientation: expected 3 finite angles, found {degrees.size} values", at)
        orientations.append(degrees * np.pi / 180.0)
    data = DetectionValidatorData([_read_view(reader, v, orientations[v]) for v in range(views)])
    reader.expect_end()
    return data
