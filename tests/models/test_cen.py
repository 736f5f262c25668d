"""CENExperts against OpenFace C++'s own output and a per-landmark NumPy float64 reference."""
import struct

import numpy as np
import pytest
import torch

from openface_files import mat, write_cen_file
from torch_clnf.models import CENExperts, cen, products, sparse_positions
from torch_clnf.openface import read_cen

pytestmark = pytest.mark.parity


def network(layers, activations, area: np.ndarray) -> np.ndarray:
    """One expert on one area, from the definition: each 11x11 window read column by column,
    minus its mean, over its norm (0 -> 1), a 1 in front, then act(W v + b) per layer."""
    win = area.shape[0] - 10
    out = np.zeros((win, win))
    for y in range(win):
        for x in range(win):
            q = area[y:y + 11, x:x + 11].T.reshape(-1)
            q = q - q.mean()
            norm = np.linalg.norm(q)
            v = np.concatenate([[1.0], q / (norm if norm != 0 else 1)])
            for (weight, bias), act in zip(layers, activations):
                v = weight.astype(np.float64) @ v + bias.astype(np.float64)
                v = 1 / (1 + np.exp(-v)) if act == 0 else np.maximum(v, 0) if act == 2 else v
            out[y, x] = v[0]
    return out


def sparse_network(layers, activations, area: np.ndarray) -> np.ndarray:
    """OpenFace's sparse evaluation: positions with x + y even are the mean of their 4-neighbours."""
    dense = network(layers, activations, area)
    win = dense.shape[0]
    out = dense.copy()
    for y in range(win):
        for x in range(win):
            if (x + y) % 2 == 0:
                out[y, x] = np.mean([dense[y + dy, x + dx] for dy, dx in ((0, -1), (-1, 0), (0, 1), (1, 0))
                                     if 0 <= y + dy < win and 0 <= x + dx < win])
    return out


def reference_response(written, view: int, landmark: int, area: np.ndarray, sparse: bool = False) -> np.ndarray:
    evaluate = sparse_network if sparse else network
    if not written.visibility[view, landmark]:
        return np.zeros((area.shape[0] - 10,) * 2)
    if (view, landmark) in written.experts:
        return evaluate(written.experts[(view, landmark)], written.activations, area)
    mirrored = written.experts[(written.mirror_views[view], written.mirror_inds[landmark])]
    return evaluate(mirrored, written.activations, area[:, ::-1])[:, ::-1]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_cen_file(tmp_path_factory.mktemp("cen") / "cen_patches_0.25_of.dat", points=68, hidden=(300, 100, 50))


def test_openface_cpp_oracle(reference_dir, tmp_path, dtype):
    """OpenFace C++'s CEN response on three synthetic experts (reference/cen_openface_cpp)."""
    folder = reference_dir / "cen_openface_cpp"
    header = struct.pack("<di", 0.25, 1) + mat(np.zeros((3, 1)), 6) + mat(np.ones((3, 1)), 4)
    header += mat(np.arange(3).reshape(1, 3), 4) + mat(np.zeros((1, 1)), 4)
    path = tmp_path / "oracle.dat"
    path.write_bytes(header + b"".join((folder / f"expert{k}.bin").read_bytes() for k in range(3)))
    experts = CENExperts(read_cen(path), dtype)
    for k, size in enumerate((21, 19, 17)):
        area = np.fromfile(folder / f"area{k}_{size}x{size}.f32", np.float32).reshape(size, size)
        expected = np.fromfile(folder / f"response{k}.f32", np.float32).reshape(size - 10, size - 10)
        areas = torch.zeros(1, 3, size, size, dtype=dtype)
        areas[0, k] = torch.from_numpy(area)
        out = experts(areas, torch.tensor([0])).maps[0, k].numpy()
        np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_matches_reference_with_mirrors_and_invisible(written, sparse):
    experts = CENExperts(read_cen(written.path), torch.float64, sparse=sparse)
    rng = np.random.default_rng(0)
    views = [0, 1, 2]   # one-sided experts, all own experts, all mirrored
    areas = rng.uniform(0, 255, (3, 68, 19, 19))
    out = experts(torch.from_numpy(areas), torch.tensor(views))
    assert out.maps.shape == (3, 68, 9, 9)
    np.testing.assert_array_equal(out.visible.numpy(), written.visibility[views] > 0)
    landmarks = [0, 8, 16, 30, 36, 45, 48, 54, 67] + np.flatnonzero(written.visibility[1] == 0)[:2].tolist()
    for b, view in enumerate(views):
        for i in landmarks:
            expected = reference_response(written, view, i, areas[b, i], sparse)
            np.testing.assert_allclose(out.maps[b, i].numpy(), expected, atol=1e-6, rtol=0)


def test_large_layers_and_float32(tmp_path, device):
    written = write_cen_file(tmp_path / "cen_patches_0.50_of.dat", points=6, hidden=(500, 200, 100), scale=0.5)
    areas = np.random.default_rng(1).uniform(0, 255, (2, 6, 21, 21))
    view = torch.tensor([1, 2])
    exact = CENExperts(read_cen(written.path), torch.float64)(torch.from_numpy(areas), view)
    for b in range(2):
        for i in range(6):
            np.testing.assert_allclose(exact.maps[b, i].numpy(), reference_response(written, int(view[b]), i, areas[b, i]), atol=1e-6, rtol=0)
    fast = CENExperts(read_cen(written.path)).to(device)(torch.from_numpy(areas).float().to(device), view.to(device))
    assert fast.maps.dtype == torch.float32
    # cuDNN convolves float32 in TF32 by default (10-bit mantissa): a few 1e-4 off on CUDA.
    tolerance = 5e-4 if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else 1e-4
    torch.testing.assert_close(fast.maps.cpu().double(), exact.maps, atol=tolerance, rtol=0)


def test_one_face_float32_on_either_kernel_route(tmp_path, monkeypatch):
    """One face's few window positions are multiplied as rows where MKL multiplies, as columns where
    oneDNN does (this CPU's choice, :mod:`torch_clnf.models.products`): float32 arithmetic either way."""
    written = write_cen_file(tmp_path / "cen_patches_0.50_of.dat", points=6, hidden=(500, 200, 100), scale=0.5)
    areas = torch.from_numpy(np.random.default_rng(6).uniform(0, 255, (1, 6, 19, 19)))
    view = torch.tensor([1])
    exact = CENExperts(read_cen(written.path), torch.float64, sparse=True)(areas, view).maps
    experts = CENExperts(read_cen(written.path), sparse=True)
    chosen = experts(areas.float(), view).maps
    monkeypatch.setattr(products, "onednn_float32_products", lambda: False)
    on_mkl = experts(areas.float(), view).maps
    for maps in (chosen, on_mkl):
        torch.testing.assert_close(maps.double(), exact, atol=1e-5, rtol=0)


def test_batch_equals_one_at_a_time_and_subsets(written):
    experts = CENExperts(read_cen(written.path), torch.float64, sparse=True)
    areas = torch.rand(4, 68, 17, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 255
    view = torch.tensor([2, 0, 1, 0])
    batch = experts(areas, view)
    for b in range(4):
        torch.testing.assert_close(experts(areas[b:b + 1], view[b:b + 1]).maps[0], batch.maps[b])
    subset = torch.tensor([36, 45, 3])
    torch.testing.assert_close(experts(areas[:, subset], view, landmarks=subset).maps, batch.maps[:, subset])


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_landmark_blocks_equal_one_block(written, sparse):
    """CPU memory bound (tile_bytes): blocks of landmarks, down to one each, give the same maps."""
    experts = CENExperts(read_cen(written.path), torch.float64, sparse=sparse)
    areas = torch.rand(3, 68, 19, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 255
    view = torch.tensor([0, 2, 0])
    whole = experts(areas, view).maps
    for tile in (1, 3 * 81 * 300 * 8 * 5):          # one landmark per block; blocks of 5
        experts.tile_bytes = tile
        torch.testing.assert_close(experts(areas, view).maps, whole, atol=1e-12, rtol=0)


def test_sparse_interpolation_layout():
    computed, interpolation = sparse_positions(5)
    assert len(computed) == 12                          # (25 - 1) / 2, as OpenFace
    assert interpolation.shape == (12, 25)
    torch.testing.assert_close(interpolation.sum(0), torch.ones(25, dtype=torch.float64))
    # the corner (0, 0) is the mean of (0, 1) and (1, 0)
    assert interpolation[:, 0].nonzero().squeeze(1).tolist() == [0, 2]


@pytest.fixture
def large_written(tmp_path):
    return write_cen_file(tmp_path / "cen_patches_0.50_of.dat", points=6, hidden=(500, 200, 100), scale=0.5)


def test_bfloat16_layers_stay_near_the_exact_maps(large_written, monkeypatch):
    """layer_dtype=bfloat16: weights and activations rounded to 8 significant bits, so maps (sigmoid
    outputs in [0, 1]) move by a few 1e-3 at most, on every CPU (emulated where not native)."""
    monkeypatch.setattr(cen, "_native_bfloat16", lambda device_type: True)
    areas = torch.from_numpy(np.random.default_rng(4).uniform(0, 255, (3, 6, 17, 17)))
    for view in (torch.tensor([1, 1, 1]), torch.tensor([1, 2, 0])):          # one view; a view per face
        exact = CENExperts(read_cen(large_written.path), torch.float64, sparse=True)(areas, view).maps
        experts = CENExperts(read_cen(large_written.path), sparse=True, layer_dtype=torch.bfloat16)
        assert experts.products_dtype() == torch.bfloat16
        assert all(w.dtype == torch.bfloat16 for w, _ in experts.view_layers(1))
        maps = experts(areas.float(), view).maps
        assert maps.dtype == torch.float32
        error = (maps.double() - exact).abs().max().item()
        assert 1e-5 < error < 1e-2


def test_bfloat16_layers_fall_back_to_float32_where_the_cpu_lacks_them(large_written, monkeypatch):
    """Emulated bfloat16 products are several times slower than float32: such a CPU keeps float32
    and says so once."""
    monkeypatch.setattr(cen.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(cen, "_warned_no_bfloat16", set())
    areas = torch.from_numpy(np.random.default_rng(5).uniform(0, 255, (1, 6, 17, 17))).float()
    view = torch.tensor([1])
    experts = CENExperts(read_cen(large_written.path), sparse=True, layer_dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        maps = experts(areas, view).maps
    assert experts.products_dtype() == torch.float32
    torch.testing.assert_close(maps, CENExperts(read_cen(large_written.path), sparse=True)(areas, view).maps)
