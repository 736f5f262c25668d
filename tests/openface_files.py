"""Writers of OpenFace's binary patch-expert formats, for tests: small synthetic files.

Written from the format description (int32 little endian; OpenCV matrices as int32 rows,
cols, type code (4 int32, 5 float32, 6 float64) then row-major data), independently of the
package's readers, so that write → read checks the readers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def mat(array: np.ndarray, code: int) -> bytes:
    dtype = {4: "<i4", 5: "<f4", 6: "<f8"}[code]
    array = np.ascontiguousarray(np.asarray(array, dtype))
    return struct.pack("<iii", array.shape[0], array.shape[1], code) + array.tobytes()


def mirror_pairs_68() -> np.ndarray:
    """The left/right mirror landmark of each of the 68 points."""
    mirror = np.arange(68)
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    pairs += [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    for a, b in pairs:
        mirror[a], mirror[b] = b, a
    return mirror


@dataclass
class SyntheticCEN:
    """What a synthetic CEN file holds (float32 weights as written, window column-major)."""

    path: Path
    scale: float
    centers_deg: np.ndarray            # (V, 3)
    visibility: np.ndarray             # (V, L) int
    mirror_inds: np.ndarray            # (L,)
    mirror_views: np.ndarray           # (V,)
    activations: list[int]
    experts: dict = field(default_factory=dict)   # (v, l) -> [(weight (out, in), bias (out,)), ...]
    confidence: np.ndarray | None = None          # (V, L)


def write_cen_file(path: Path, points: int = 68, hidden: tuple[int, ...] = (300, 100, 50),
                   activations: tuple[int, ...] = (2, 2, 0, 0), scale: float = 0.25, seed: int = 0,
                   support: int = 11) -> SyntheticCEN:
    """A CEN file with 3 views: frontal (experts on one side of each mirror pair, the others
    empty), yaw -45° (all visible landmarks have experts; a few are invisible), and yaw +45°,
    the mirror of view 1 (all experts empty, served by mirroring)."""
    rng = np.random.default_rng(seed)
    mirror = mirror_pairs_68() if points == 68 else np.arange(points)[::-1].copy()
    centers = np.array([[0, 0, 0], [0, -45, 0], [0, 45, 0]], float)
    mirror_views = np.array([0, 2, 1])
    visibility = np.ones((3, points), np.int32)
    hidden_in_1 = rng.choice(points, size=max(1, points // 10), replace=False)
    visibility[1, hidden_in_1] = 0
    visibility[2, mirror[hidden_in_1]] = 0
    nonempty = np.zeros((3, points), bool)
    nonempty[0] = mirror >= np.arange(points)
    nonempty[1] = visibility[1] > 0
    dims = [support * support + 1, *hidden, 1]
    info = SyntheticCEN(path, scale, centers, visibility, mirror, mirror_views, list(activations),
                        confidence=rng.uniform(0.5, 1, (3, points)))
    out = bytearray(struct.pack("<d", scale) + struct.pack("<i", 3))
    out += b"".join(mat(c.reshape(3, 1), 6) for c in centers)
    out += b"".join(mat(v.reshape(-1, 1), 4) for v in visibility)
    out += mat(mirror.reshape(1, -1), 4) + mat(mirror_views.reshape(1, -1), 4)
    for v in range(3):
        for i in range(points):
            if not nonempty[v, i]:
                out += struct.pack("<iiii", 6, support, support, 0) + struct.pack("<d", info.confidence[v, i])
                continue
            out += struct.pack("<iiii", 6, support, support, len(dims) - 1)
            layers = []
            for k in range(len(dims) - 1):
                weight = (rng.standard_normal((dims[k + 1], dims[k])) * (1.5 if k == 0 else np.sqrt(2 / dims[k]))).astype(np.float32)
                bias = (rng.standard_normal(dims[k + 1]) * 0.1).astype(np.float32)
                out += struct.pack("<i", activations[k]) + mat(bias.reshape(1, -1), 5) + mat(weight, 5)
                layers.append((weight, bias))
            out += struct.pack("<d", info.confidence[v, i])
            info.experts[(v, i)] = layers
    Path(path).write_bytes(bytes(out))
    return info


@dataclass
class SyntheticCCNF:
    path: Path
    windows: list[int]


def write_ccnf_file(path: Path, points: int = 3, views: int = 2, neurons: int = 2, seed: int = 0) -> SyntheticCCNF:
    """A small CCNF file: 2 window sizes with 3 Σ components each, one empty expert."""
    rng = np.random.default_rng(seed)
    windows = [3, 5]
    out = bytearray(struct.pack("<d", 0.25) + struct.pack("<i", views))
    out += b"".join(mat(np.array([[0.0], [20.0 * v], [0.0]]), 6) for v in range(views))
    visibility = np.ones((views, points), np.int32)
    visibility[-1, 0] = 0
    out += b"".join(mat(v.reshape(-1, 1), 4) for v in visibility)
    out += struct.pack("<i", len(windows))
    for win in windows:
        out += struct.pack("<ii", win, 3)
        for _ in range(3):
            a = rng.standard_normal((win * win, win * win)).astype(np.float32)
            out += mat(a @ a.T / (win * win), 5)
    for v in range(views):
        for i in range(points):
            if not visibility[v, i]:
                out += struct.pack("<iiii", 5, 11, 11, 0) + struct.pack("<i", 0)
                continue
            out += struct.pack("<iiii", 5, 11, 11, neurons)
            for _ in range(neurons):
                out += struct.pack("<ii", 2, 0) + struct.pack("<ddd", rng.uniform(1, 5), rng.normal(), rng.uniform(0.1, 2))
                out += mat(rng.standard_normal((11, 11)), 5)
            out += struct.pack("<ddd", *rng.uniform(0, 1, 3)) + struct.pack("<d", rng.uniform(0.5, 1))
    Path(path).write_bytes(bytes(out))
    return SyntheticCCNF(Path(path), windows)
