"""The CNN layers OpenFace's binary network files share (the validator's and MTCNN's).

A convolution is int32 input maps, int32 kernels, the kernels' float32 biases, then one
``ReadMatBin`` float32 kernel per (input map, kernel), input-major; a fully connected layer is
its (out × 1) biases then its (in × out) weights, both ``ReadMatBin`` float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .binary import BinaryReader


@dataclass
class CNNLayer:
    """One CNN layer.

    Attributes:
        kind: ``"conv"`` (valid cross-correlation, stride 1), ``"max_pool"``,
            ``"fully_connected"``, ``"relu"``, ``"prelu"`` or ``"sigmoid"``.
        weight: conv: (out, in, kh, kw) float32, ``out[k] = Σ_in weight[k, in] ⋆ map[in] + bias[k]``;
            fully connected: (in, out) float32 as stored, ``out = weightᵀ · x + bias`` with ``x``
            the input maps each flattened column by column, then concatenated; PReLU: (C,)
            the slope of each channel's negative part. None otherwise.
        bias: (out,) float32, or None.
        kernel, stride: max pooling's window and step (height, width), when the file gives them.
    """

    kind: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None


def read_float32s(reader: BinaryReader, count: int, what: str) -> np.ndarray:
    """``count`` raw float32 values (read as int32 bit patterns, reinterpreted)."""
    bits = np.array([reader.int32(f"{what} {k}") for k in range(count)], "<i4")
    return bits.view("<f4").astype(np.float32)


def read_conv(reader: BinaryReader, what: str) -> CNNLayer:
    """A convolution layer (after its type code)."""
    maps_in = reader.count(f"{what} input maps", 1, 4096)
    kernels = reader.count(f"{what} kernels", 1, 4096)
    bias = read_float32s(reader, kernels, f"{what} bias")
    first = reader.offset
    kernel = reader.matrix(f"{what} kernel (input 0, output 0)", 5)
    rest = reader.matrices(maps_in * kernels - 1, *kernel.shape, 5) if kernel.size else None
    if rest is not None:                                # every kernel alike (the usual file): read at once
        stored = np.concatenate([kernel[None], rest])
    else:                                               # one by one, to name the kernel that differs
        reader.offset = first
        stored = _kernels_one_by_one(reader, what, maps_in, kernels)
    weight = stored.reshape(maps_in, kernels, *kernel.shape).transpose(1, 0, 2, 3)     # input-major in the file
    return CNNLayer("conv", np.ascontiguousarray(weight), bias)


def _kernels_one_by_one(reader: BinaryReader, what: str, maps_in: int, kernels: int) -> np.ndarray:
    """(maps_in · kernels, h, w) a convolution's kernels, each checked as it is read."""
    shape: tuple[int | None, int | None] = (None, None)
    stored = []
    for i in range(maps_in):
        for k in range(kernels):
            at = reader.offset
            kernel = reader.matrix(f"{what} kernel (input {i}, output {k})", 5, shape)
            if kernel.size == 0:
                raise reader.error(f"{what}: expected a non-empty kernel, found {kernel.shape}", at)
            shape = kernel.shape
            stored.append(kernel)
    return np.stack(stored)


def read_fully_connected(reader: BinaryReader, what: str) -> CNNLayer:
    """A fully connected layer (after its type code)."""
    bias = reader.matrix(f"{what} biases", 5, (None, 1))[:, 0]
    weight = reader.matrix(f"{what} weights", 5, (None, bias.shape[0]))
    return CNNLayer("fully_connected", weight, bias)
