"""Reading OpenFace's MTCNN networks: layer shapes, and damaged files named in the error."""
import shutil
import struct

import numpy as np
import pytest

from torch_clnf.openface import ModelFileError
from torch_clnf.openface.binary import BinaryReader
from torch_clnf.openface.cnn import read_conv
from torch_clnf.openface.mtcnn import read_cnn, read_mtcnn


def test_reads_the_three_networks(models_dir):
    data = read_mtcnn(models_dir / "mtcnn_detector/MTCNN_detector.txt")
    assert [layer.kind for layer in data.pnet] == ["conv", "prelu", "max_pool", "conv", "prelu", "conv", "prelu",
                                                   "fully_connected"]
    assert data.pnet[0].weight.shape == (10, 3, 3, 3) and data.pnet[0].bias.shape == (10,)
    assert data.pnet[2].kernel == (2, 2) and data.pnet[2].stride == (2, 2)
    assert data.pnet[-1].weight.shape == (32, 6)                         # (in, out): 2 face scores, 4 box offsets
    assert data.rnet[-3].weight.shape == (576, 128) and data.rnet[-1].weight.shape == (128, 6)
    assert data.onet[-3].weight.shape == (1152, 256) and data.onet[-1].weight.shape == (256, 16)
    assert data.onet[1].weight.shape == (32,)                            # PReLU slopes per channel


def test_truncated_and_missing_files_are_named(models_dir, tmp_path):
    source = models_dir / "mtcnn_detector/RNet.dat"
    cut = tmp_path / "RNet.dat"
    cut.write_bytes(source.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"RNet\.dat, byte \d+: file ends after 1000 bytes"):
        read_cnn(cut)
    for name in ("MTCNN_detector.txt", "PNet.dat", "ONet.dat"):
        shutil.copy(models_dir / "mtcnn_detector" / name, tmp_path / name)
    with pytest.raises(ModelFileError, match="RNet.dat"):
        read_mtcnn(tmp_path / "MTCNN_detector.txt")                      # names the network that is cut
    with pytest.raises(ModelFileError, match="file not found"):
        read_cnn(tmp_path / "absent.dat")


def test_unknown_layer_type_and_bad_spec(tmp_path):
    (tmp_path / "bad.dat").write_bytes((1).to_bytes(4, "little") + (9).to_bytes(4, "little"))
    with pytest.raises(ModelFileError, match="byte 4: layer 0: expected a layer type in 0..4, found 9"):
        read_cnn(tmp_path / "bad.dat")
    (tmp_path / "MTCNN_detector.txt").write_text("PNet PNet.dat\nXNet X.dat\n")
    with pytest.raises(ModelFileError, match="line 2: expected '<PNet|RNet|ONet> <file>'"):
        read_mtcnn(tmp_path / "MTCNN_detector.txt")


def _conv_bytes(kernels: list) -> bytes:
    """A convolution layer's bytes after its type code: one input map, ``kernels`` as float32 matrices."""
    out = struct.pack("<ii", 1, len(kernels)) + np.arange(len(kernels), dtype="<f4").tobytes()       # bias
    for kernel in kernels:
        out += struct.pack("<iii", *kernel.shape, 5) + kernel.astype("<f4").tobytes()
    return out


def test_conv_kernels_are_read_at_once_and_a_kernel_that_differs_is_named(tmp_path):
    kernels = [np.arange(9.0).reshape(3, 3) + 10 * k for k in range(3)]
    layer = read_conv(BinaryReader(tmp_path / "conv.dat", _conv_bytes(kernels)), "layer 0 (conv)")
    assert layer.weight.shape == (3, 1, 3, 3) and np.array_equal(layer.weight[:, 0], np.stack(kernels))
    assert np.array_equal(layer.bias, [0, 1, 2])
    kernels[2] = np.zeros((3, 2))                                        # the third kernel 3x2: named
    with pytest.raises(ModelFileError, match=r"conv\.dat, byte \d+: layer 0 \(conv\) kernel \(input 0, output 2\): "
                                             "expected 3 cols, found 2"):
        read_conv(BinaryReader(tmp_path / "conv.dat", _conv_bytes(kernels)), "layer 0 (conv)")
