import csv

import pytest
import torch

from torch_clnf.models import PointDistributionModel
from torch_clnf.models.rotation import euler_to_matrix, matrix_to_euler, small_rotation
from torch_clnf.openface import read_pdm


@pytest.fixture(scope="module")
def pdm_data(models_dir):
    return read_pdm(models_dir / "pdms/In-the-wild_aligned_PDM_68.txt")


@pytest.fixture
def pdm(pdm_data, device, dtype):
    return PointDistributionModel(pdm_data, dtype).to(device)


def reference_rows(reference_dir):
    with open(reference_dir / "openface_cpp/images_default.csv") as f:
        return list(csv.DictReader(f))


def random_params(pdm, batch, generator):
    g = torch.cat([1 + torch.rand(batch, 1, generator=generator),
                   (torch.rand(batch, 3, generator=generator) - 0.5) * 0.8,
                   200 + 50 * torch.rand(batch, 2, generator=generator)], 1)
    p = torch.randn(batch, pdm.num_modes, generator=generator) * pdm.eigenvalues.cpu().sqrt() * 0.5
    return g.to(pdm.mean_shape), p.to(pdm.mean_shape)


def test_mean_shape_with_zero_params(pdm, pdm_data):
    shape = pdm.shape_3d(torch.zeros(2, pdm.num_modes, dtype=pdm.mean_shape.dtype, device=pdm.mean_shape.device))
    assert shape.shape == (2, 68, 3)
    torch.testing.assert_close(shape.cpu().double(), pdm_data.mean_shape.expand(2, 68, 3), atol=1e-4, rtol=0)


def test_init_from_box_equals_openface(pdm, reference_dir):
    """Params and landmarks from the recorded MTCNN box equal C++'s initialisation (init/*.csv)."""
    for row in reference_rows(reference_dir):
        lines = (reference_dir / f"openface_cpp/init/{row['file_or_frame']}.csv").read_text().split()
        expected_params = torch.tensor([float(v) for v in lines[1].split(",")], dtype=torch.float64)
        expected = torch.tensor([[float(v) for v in line.split(",")[1:]] for line in lines[3:]], dtype=torch.float64)
        box = torch.tensor([[float(row[k]) for k in ("box_x", "box_y", "box_w", "box_h")]]).to(pdm.mean_shape)
        params = pdm.params_from_box(box)
        landmarks = pdm.project(params)[0].cpu().double()
        torch.testing.assert_close(params[0].cpu().double(), expected_params, atol=2e-3, rtol=1e-5)
        assert (landmarks - expected).norm(dim=1).max() < 0.01  # pixels


def test_projection_of_fitted_params_equals_openface(pdm, reference_dir):
    """C++'s final params projected with our Euler convention give C++'s landmarks."""
    rows = reference_rows(reference_dir)
    g = torch.tensor([[float(r[k]) for k in ("scale", "rx", "ry", "rz", "tx", "ty")] for r in rows])
    p = torch.tensor([[float(r[f"p{i}"]) for i in range(34)] for r in rows])
    expected = torch.tensor([[[float(r[f"x{i}"]), float(r[f"y{i}"])] for i in range(68)] for r in rows], dtype=torch.float64)
    landmarks = pdm.project(g.to(pdm.mean_shape), p.to(pdm.mean_shape)).cpu().double()
    assert (landmarks - expected).norm(dim=-1).max() < 0.01


@pytest.mark.parametrize("rigid", [False, True])
def test_jacobian_matches_finite_differences(pdm_data, rigid):
    pdm = PointDistributionModel(pdm_data, torch.float64)
    g, p = random_params(pdm, 3, torch.Generator().manual_seed(1))
    jac = pdm.jacobian(g, p, rigid=rigid)
    k = 6 if rigid else 6 + pdm.num_modes
    assert jac.shape == (3, 68, 2, k)
    eps = 1e-6
    for column in range(k):
        step = torch.zeros(3, 6 + pdm.num_modes, dtype=torch.float64)
        step[:, column] = eps
        plus = pdm.project(*pdm.update(g, p, step))
        minus = pdm.project(*pdm.update(g, p, -step))
        torch.testing.assert_close(jac[..., column], (plus - minus) / (2 * eps), atol=1e-5, rtol=1e-5)


def test_update_composes_rotations(pdm_data):
    pdm = PointDistributionModel(pdm_data, torch.float64)
    g = torch.tensor([[1.0, 0.3, -0.5, 0.2, 10.0, 20.0]], dtype=torch.float64)
    delta = torch.tensor([[0.1, 0.02, -0.03, 0.01, 1.0, -2.0]], dtype=torch.float64)
    new_g, _ = pdm.update(g, None, delta)
    expected = euler_to_matrix(g[:, 1:4]) @ small_rotation(delta[:, 1:4])
    torch.testing.assert_close(euler_to_matrix(new_g[:, 1:4]), expected)
    torch.testing.assert_close(new_g[:, [0, 4, 5]], g[:, [0, 4, 5]] + delta[:, [0, 4, 5]])
    torch.testing.assert_close(pdm.rotate(euler_to_matrix(g[:, 1:4]), delta), expected)


def test_euler_round_trip():
    euler = (torch.rand(100, 3, dtype=torch.float64) - 0.5) * 2.4
    torch.testing.assert_close(matrix_to_euler(euler_to_matrix(euler)), euler)
    rotation = small_rotation(torch.randn(10, 3, dtype=torch.float64) * 0.1)
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3))
    torch.testing.assert_close(torch.det(rotation), torch.ones(10, dtype=torch.float64))


def test_params_from_landmarks_recovers_known_params(pdm):
    g, p = random_params(pdm, 4, torch.Generator().manual_seed(2))
    landmarks = pdm.project(g, p)
    fitted_g, fitted_p = pdm.params_from_landmarks(landmarks)
    error = (pdm.project(fitted_g, fitted_p) - landmarks).norm(dim=-1)
    assert error.mean() < 0.5 and error.max() < 1.5  # pixels: sub-pixel on average, the prior pulls a little
    torch.testing.assert_close(fitted_g[:, 1:4], g[:, 1:4], atol=0.03, rtol=0)


def test_params_from_landmarks_with_hidden_points(pdm):
    g, p = random_params(pdm, 2, torch.Generator().manual_seed(3))
    landmarks = pdm.project(g, p)
    visible = torch.ones(2, 68, dtype=torch.bool, device=landmarks.device)
    visible[:, :17] = False                                      # no jaw line
    hidden = torch.tensor([1e4, torch.nan]).to(landmarks)[:, None, None]     # far away, or not known at all
    corrupted = torch.where(visible[..., None], landmarks, hidden)
    fitted_g, fitted_p = pdm.params_from_landmarks(corrupted, visible)
    error = (pdm.project(fitted_g, fitted_p) - landmarks).norm(dim=-1)[visible]
    assert error.mean() < 0.5


def test_batch_equals_one_at_a_time(pdm):
    g, p = random_params(pdm, 3, torch.Generator().manual_seed(4))
    landmarks = pdm.project(g, p)
    batch_g, batch_p = pdm.params_from_landmarks(landmarks)
    tol = {"atol": 1e-3, "rtol": 1e-4} if g.dtype == torch.float32 else {}  # BLAS sums in another order
    for i in range(3):
        one_g, one_p = pdm.params_from_landmarks(landmarks[i:i + 1])
        torch.testing.assert_close(one_g[0], batch_g[i], **tol)
        torch.testing.assert_close(one_p[0], batch_p[i], **tol)
        torch.testing.assert_close(pdm.jacobian(g[i:i + 1], p[i:i + 1])[0], pdm.jacobian(g, p)[i])
    boxes = torch.tensor([[10.0, 20, 100, 120], [50, 60, 200, 180]]).to(g)
    torch.testing.assert_close(pdm.params_from_box(boxes)[1:], pdm.params_from_box(boxes[1:]))


def test_clamp(pdm):
    limit = 3 * pdm.eigenvalues.sqrt()
    params = torch.stack([limit * 2, -limit * 2, limit / 2])
    clamped = pdm.clamp(params)
    torch.testing.assert_close(clamped, torch.stack([limit, -limit, limit / 2]))


def test_a_zero_step_leaves_params_and_rotation_exactly_as_they_are(pdm):
    """NU-RLMS and CalcParams give faces that no longer run zero steps instead of masking their results."""
    g, p = random_params(pdm, 3, torch.Generator().manual_seed(5))
    rotation = euler_to_matrix(g[:, 1:4])
    step = torch.zeros(3, 6 + pdm.num_modes, dtype=g.dtype)
    new_g, new_p = pdm.add_step(g, p, step)
    assert torch.equal(new_g, g) and torch.equal(new_p, p)
    assert torch.equal(pdm.rotate(rotation, step), rotation)


def test_small_rotation_is_the_svd_orthonormalisation():
    """OpenFace orthonormalises I + [δ]× with an SVD; the closed form gives the same matrix."""
    delta = torch.cat([torch.randn(20, 3, dtype=torch.float64) * 0.3, torch.zeros(1, 3, dtype=torch.float64)])
    x, y, z = delta.unbind(-1)
    one = torch.ones_like(x)
    approx = torch.stack([torch.stack(r, -1) for r in ((one, -z, y), (z, one, -x), (-y, x, one))], -2)
    u, _, vh = torch.linalg.svd(approx)
    torch.testing.assert_close(small_rotation(delta), u @ vh)


def test_degenerate_rotation_gives_zero_angles():
    """OpenFace sets all three angles to 0 when the conversion gives NaN (a 180° rotation here)."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))[None]
    assert matrix_to_euler(flip).tolist() == [[0.0, 0.0, 0.0]]
