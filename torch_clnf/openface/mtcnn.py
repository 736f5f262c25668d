"""Reader for OpenFace's MTCNN face detector (``mtcnn_detector/MTCNN_detector.txt`` and the
``PNet.dat`` / ``RNet.dat`` / ``ONet.dat`` files it names).

Each ``.dat`` file is one CNN: int32 layer count, then per layer an int32 type — 0 convolution,
1 max pooling (int32 kernel width, kernel height, stride x, stride y), 2 fully connected,
3 PReLU (a ``ReadMatBin`` (C × 1) float32 of negative slopes), 4 sigmoid — and its data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .binary import BinaryReader
from .cnn import CNNLayer, read_conv, read_fully_connected
from .errors import ModelFileError, read_bytes

CONV, MAX_POOL, FULLY_CONNECTED, PRELU, SIGMOID = 0, 1, 2, 3, 4
NETWORKS = ("PNet", "RNet", "ONet")


@dataclass
class MTCNNData:
    """The three networks of OpenFace's MTCNN, as layer lists.

    Attributes:
        pnet: proposal network (fully convolutional, 12×12 px support).
        rnet: refinement network (24×24 px input).
        onet: output network (48×48 px input).
    """

    pnet: list[CNNLayer]
    rnet: list[CNNLayer]
    onet: list[CNNLayer]


def read_cnn(path: str | Path) -> list[CNNLayer]:
    """One MTCNN network file (``PNet.dat`` …)."""
    reader = BinaryReader(path)
    layers: list[CNNLayer] = []
    channels: int | None = None                      # output channels so far, to check the next layer
    for n in range(reader.count("number of layers", 1, 256)):
        at = reader.offset
        kind = reader.int32(f"layer {n} type")
        what = f"layer {n}"
        if kind == CONV:
            layer = read_conv(reader, f"{what} (conv)")
            if channels is not None and layer.weight.shape[1] != channels:
                raise reader.error(f"{what} (conv): expected {channels} input maps, found {layer.weight.shape[1]}", at)
            channels = layer.weight.shape[0]
        elif kind == MAX_POOL:
            kernel_x, kernel_y, stride_x, stride_y = (reader.count(f"{what} (max pooling) {name}", 1, 64)
                                                      for name in ("kernel width", "kernel height", "stride x", "stride y"))
            layer = CNNLayer("max_pool", kernel=(kernel_y, kernel_x), stride=(stride_y, stride_x))
        elif kind == FULLY_CONNECTED:
            layer = read_fully_connected(reader, f"{what} (fully connected)")
            channels = layer.weight.shape[1]
        elif kind == PRELU:
            slopes = reader.matrix(f"{what} (PReLU) slopes", 5, (None, 1))[:, 0]
            if channels is not None and slopes.shape[0] != channels:
                raise reader.error(f"{what} (PReLU): expected {channels} slopes, found {slopes.shape[0]}", at)
            layer = CNNLayer("prelu", slopes.astype(np.float32))
        elif kind == SIGMOID:
            layer = CNNLayer("sigmoid")
        else:
            raise reader.error(f"{what}: expected a layer type in 0..4, found {kind}", at)
        if (layer.weight is not None and not np.isfinite(layer.weight).all()) or \
                (layer.bias is not None and not np.isfinite(layer.bias).all()):
            raise reader.error(f"{what}: expected finite weights, found NaN or infinity", at)
        layers.append(layer)
    if layers[0].kind != "conv" or layers[0].weight.shape[1] != 3:
        raise ModelFileError(reader.path, "byte 4", "expected the first layer to be a convolution of the 3 colour channels")
    reader.expect_end()
    return layers


def read_mtcnn(path: str | Path) -> MTCNNData:
    """``MTCNN_detector.txt`` (lines ``PNet PNet.dat`` …, paths relative to it) and its three networks."""
    path = Path(path)
    raw = read_bytes(path)
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ModelFileError(path, f"byte {err.start}", "expected the text file naming PNet, RNet and ONet") from None
    named: dict[str, Path] = {}
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words:
            continue
        if words[0] not in NETWORKS or len(words) < 2:
            raise ModelFileError(path, f"line {number}", f"expected '<PNet|RNet|ONet> <file>', found {line.strip()!r}")
        named[words[0]] = path.parent / words[1]
    missing = [name for name in NETWORKS if name not in named]
    if missing:
        raise ModelFileError(path, None, f"expected lines for PNet, RNet and ONet, missing {', '.join(missing)}")
    return MTCNNData(*(read_cnn(named[name]) for name in NETWORKS))
