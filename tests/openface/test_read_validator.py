"""Reading OpenFace's CNN detection validators (detection_validation/validator_cnn*.txt)."""
import struct

import numpy as np
import pytest

from openface_files import mat
from torch_clnf.openface import ModelFileError
from torch_clnf.openface.validator import read_validator

CNN = "detection_validation/validator_cnn.txt"
YAWS = [0, -20, -45, -70, 20, 45, 70]
PIXELS = [2642, 2469, 1665, 1491, 2494, 1690, 1536]
TRIANGLES = [97, 97, 36, 31, 97, 36, 31]


def test_validator_cnn_layout(models_dir):
    data = read_validator(models_dir / CNN)
    assert data.num_views == 7
    np.testing.assert_allclose(data.orientations, np.deg2rad([[0, y, 0] for y in YAWS]), atol=1e-12, rtol=0)
    for v, view in enumerate(data.views):
        warp = view.warp
        assert [layer.kind for layer in view.layers] == [
            "conv", "relu", "max_pool", "conv", "relu", "max_pool", "fully_connected", "relu", "fully_connected"]
        assert view.layers[0].weight.shape == (10, 1, 9, 9) and view.layers[0].bias.shape == (10,)
        assert view.layers[3].weight.shape == (10, 10, 7, 7)
        assert view.layers[6].weight.shape == (1000, 50) and view.layers[6].bias.shape == (50,)
        assert view.layers[8].weight.shape == (50, 30) and view.bins == 30
        assert all(layer.weight.dtype == np.float32 for layer in view.layers if layer.weight is not None)
        assert warp.mask.shape == (60, 60) and warp.num_pixels == PIXELS[v]
        assert view.mean.shape == view.std.shape == (PIXELS[v],) and (view.std > 0).all()
        assert warp.destination.shape == (68, 2)
        assert warp.triangles.shape == (TRIANGLES[v], 3) and warp.alpha.shape == warp.beta.shape == (TRIANGLES[v], 3)
        assert ((warp.triangle_id >= 0) == warp.mask).all()
        assert warp.min_y == pytest.approx(-25.129874326651368)


def test_validator_cnn_68_layout(models_dir):
    data = read_validator(models_dir / "detection_validation/validator_cnn_68.txt")
    view = data.views[0]
    assert data.num_views == 7 and view.bins == 20
    convs = [layer.weight.shape for layer in view.layers if layer.kind == "conv"]
    assert convs == [(20, 1, 5, 5), (50, 20, 5, 5), (20, 50, 3, 3)]


def test_warp_coefficients_are_barycentric(models_dir):
    """alpha and beta give each triangle's barycentric coordinates in the reference frame."""
    warp = read_validator(models_dir / CNN).views[0].warp
    corners = warp.destination[warp.triangles]                                # (T, 3, 2)
    homogeneous = np.concatenate([np.ones((*corners.shape[:2], 1)), corners], -1)   # (T, 3, 3) (1, x, y)
    alpha = np.einsum("tc,tkc->tk", warp.alpha, homogeneous)
    beta = np.einsum("tc,tkc->tk", warp.beta, homogeneous)
    np.testing.assert_allclose(alpha, np.broadcast_to([0, 1, 0], alpha.shape), atol=1e-4)
    np.testing.assert_allclose(beta, np.broadcast_to([0, 0, 1], beta.shape), atol=1e-4)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="file not found") as err:
        read_validator(tmp_path / "absent.txt")
    assert err.value.path == tmp_path / "absent.txt"


@pytest.mark.parametrize("fraction", [0.0, 0.002, 0.1, 0.5, 0.9, 0.9999])
def test_truncated(models_dir, tmp_path, fraction):
    data = (models_dir / CNN).read_bytes()
    cut = int(len(data) * fraction)
    (tmp_path / "cut.txt").write_bytes(data[:cut])
    message = r"cut.txt, byte \d+: file ends after %d bytes, expected \d+ more bytes for " % cut
    with pytest.raises(ModelFileError, match=message) as err:
        read_validator(tmp_path / "cut.txt")
    assert err.value.path == tmp_path / "cut.txt"


def test_trailing_bytes(models_dir, tmp_path):
    data = (models_dir / CNN).read_bytes()
    (tmp_path / "long.txt").write_bytes(data + b"\0\0\0\0")
    with pytest.raises(ModelFileError, match=r"long.txt, byte %d: expected end of file, found 4 more bytes" % len(data)):
        read_validator(tmp_path / "long.txt")


def test_old_validator_type(models_dir):
    with pytest.raises(ModelFileError, match=r"validator_general_68.txt, byte 0: expected validator type .*= 3, found 2"):
        read_validator(models_dir / "detection_validation/validator_general_68.txt")


def test_corrupted_fields(models_dir, tmp_path):
    data = bytearray((models_dir / CNN).read_bytes())
    bad = bytearray(data)
    struct.pack_into("<i", bad, 4, 0)                                          # number of views
    (tmp_path / "bad.txt").write_bytes(bad)
    with pytest.raises(ModelFileError, match=r"bad.txt, byte 4: expected number of views in \[1, 64\], found 0"):
        read_validator(tmp_path / "bad.txt")
    # view 0: after the 7 orientations (12 + 24 bytes each) come two 1×2642 float64 images,
    # the layer count and the first layer's type
    layer_type = 8 + 7 * 36 + 2 * (12 + 2642 * 8) + 4
    assert struct.unpack_from("<i", data, layer_type)[0] == 0
    bad = bytearray(data)
    struct.pack_into("<i", bad, layer_type, 9)
    (tmp_path / "bad.txt").write_bytes(bad)
    with pytest.raises(ModelFileError, match=r"byte %d: view 0 layer 0: expected a layer type in 0..4, found 9" % layer_type):
        read_validator(tmp_path / "bad.txt")


def write_small_validator(path, fc_inputs: int = 8, validator_type: int = 3) -> None:
    """One view: a 6×6 warp of a 3-point triangle, conv 1→2 (3×3), ReLU, max pool, FC → 4, ReLU, FC → 3."""
    rng = np.random.default_rng(0)
    destination = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    ys, xs = np.mgrid[0:6, 0:6]
    mask = (xs + ys <= 5).astype(np.int32)
    # barycentric coefficients of the triangle (j, k, l) = (0, 1, 2): alpha = x / 5, beta = y / 5
    alpha, beta = np.array([[0, 0.2, 0]]), np.array([[0, 0, 0.2]])
    pixels = int(mask.sum())
    out = struct.pack("<ii", validator_type, 1) + mat(np.array([[0.0], [10.0], [0.0]]), 6)
    out += mat(rng.normal(size=(1, pixels)), 6) + mat(rng.uniform(1, 2, size=(1, pixels)), 6)
    out += struct.pack("<i", 6) + struct.pack("<iii", 0, 1, 2) + np.float32([0.5, -0.5]).tobytes()
    out += b"".join(mat(rng.normal(size=(3, 3)), 5) for _ in range(2))
    out += struct.pack("<ii", 3, 1)
    out += struct.pack("<i", 2) + mat(rng.normal(size=(4, 1)), 5) + mat(rng.normal(size=(fc_inputs, 4)), 5)
    out += struct.pack("<i", 3)
    out += struct.pack("<i", 2) + mat(rng.normal(size=(3, 1)), 5) + mat(rng.normal(size=(4, 3)), 5)
    out += struct.pack("<idd", pixels, 0.0, 0.0) + mat(destination.T.reshape(-1, 1), 6) + mat(np.array([[0, 1, 2]]), 4)
    out += mat(np.where(mask > 0, 0, -1), 4) + mat(mask, 4) + mat(alpha, 6) + mat(beta, 6)
    path.write_bytes(out)


def test_small_validator(tmp_path):
    write_small_validator(tmp_path / "small.txt")
    data = read_validator(tmp_path / "small.txt")
    view = data.views[0]
    assert view.orientation[1] == pytest.approx(np.deg2rad(10))
    assert [layer.kind for layer in view.layers] == ["conv", "relu", "max_pool", "fully_connected", "relu", "fully_connected"]
    assert view.layers[0].weight.shape == (2, 1, 3, 3) and view.layers[0].bias.tolist() == [0.5, -0.5]
    assert view.bins == 3 and view.warp.num_pixels == 21 and view.mean.shape == (21,)


def test_network_that_does_not_fit(tmp_path):
    write_small_validator(tmp_path / "bad.txt", fc_inputs=9)     # conv and pool leave 2 maps of 2×2 = 8 inputs
    message = r"bad.txt, byte \d+: view 0 layer 3 \(fully_connected\): expected 8 inputs, found weights for 9"
    with pytest.raises(ModelFileError, match=message):
        read_validator(tmp_path / "bad.txt")
