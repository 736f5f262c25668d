import pytest
import torch

from torch_clnf.models import CCNFExperts, PointDistributionModel
from torch_clnf.models.stacking import StackedExperts, StackedPDM
from torch_clnf.openface import read_ccnf, read_pdm


@pytest.fixture(scope="module")
def eye_pdms(models_dir):
    return [PointDistributionModel(read_pdm(models_dir / f"model_eye/pdms/{name}"), torch.float64)
            for name in ("pdm_28_l_eye_3D_closed.txt", "pdm_28_eye_3D_closed.txt")]


@pytest.fixture(scope="module")
def eye_experts(models_dir):
    return [CCNFExperts(read_ccnf(models_dir / f"model_eye/patch_experts/{side}ccnf_patches_1.00_synth_lid_.txt"),
                        torch.float64) for side in ("left_", "")]


def params(pdm, batch, seed):
    g = torch.Generator().manual_seed(seed)
    glob = torch.cat([2 + torch.rand(batch, 1, generator=g, dtype=torch.float64),
                      (torch.rand(batch, 3, generator=g, dtype=torch.float64) - 0.5) * 0.6,
                      100 + 50 * torch.rand(batch, 2, generator=g, dtype=torch.float64)], 1)
    local = torch.randn(batch, pdm.num_modes, generator=g, dtype=torch.float64) * pdm.eigenvalues.sqrt() * 0.5
    return glob, local


def test_tiled_pdm_is_each_members_model(eye_pdms):
    stacked = StackedPDM(eye_pdms)
    batch = 3
    tiled = stacked.tiled(batch)
    assert stacked.tiled(batch) is tiled                                    # kept per batch size
    assert stacked.member_index(batch).tolist() == [0, 0, 0, 1, 1, 1]
    glob, local = params(eye_pdms[0], 2 * batch, 0)
    shape, jacobian = tiled.project_with_jacobian(glob, local)
    assert shape.shape == (6, 28, 2) and jacobian.shape == (6, 28, 2, 6 + tiled.num_modes)
    for m, pdm in enumerate(eye_pdms):
        block = slice(m * batch, (m + 1) * batch)
        own_shape, own_jacobian = pdm.project_with_jacobian(glob[block], local[block])
        torch.testing.assert_close(shape[block], own_shape, atol=1e-10, rtol=0)
        torch.testing.assert_close(jacobian[block], own_jacobian, atol=1e-10, rtol=0)
        torch.testing.assert_close(tiled.clamp(local * 10)[block], pdm.clamp(local[block] * 10))
        torch.testing.assert_close(tiled.prior(0.5)[block], pdm.prior(0.5).expand(batch, -1))
        # CalcParams from each member's own projected landmarks
        g, p = tiled.params_from_landmarks(shape)
        own_g, own_p = pdm.params_from_landmarks(own_shape)
        torch.testing.assert_close(g[block], own_g, atol=1e-7, rtol=0)
        torch.testing.assert_close(p[block], own_p, atol=1e-7, rtol=0)


def test_stacked_experts_pick_each_faces_member(eye_experts):
    stacked = StackedExperts(eye_experts)
    assert stacked.num_views == 2 and stacked.view_member.tolist() == [0, 1]
    areas = torch.rand(4, 28, 15, 15, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 255
    view = torch.tensor([1, 0, 0, 1])
    out = stacked(areas, view)
    for face, v in enumerate(view.tolist()):
        own = eye_experts[v](areas[face:face + 1], torch.tensor([0]))
        torch.testing.assert_close(out.maps[face], own.maps[0])
        assert torch.equal(out.visible[face], own.visible[0])
    only_right = stacked(areas[:2], torch.tensor([1, 1]))
    torch.testing.assert_close(only_right.maps, eye_experts[1](areas[:2], torch.tensor([0, 0])).maps)


def test_stacking_needs_equal_shapes(eye_pdms, eye_experts, models_dir):
    inner = PointDistributionModel(read_pdm(models_dir / "model_inner/pdms/pdm_51_inner.txt"), torch.float64)
    with pytest.raises(ValueError, match="equal"):
        StackedPDM([eye_pdms[0], inner])
    scale_2 = CCNFExperts(read_ccnf(models_dir / "model_eye/patch_experts/left_ccnf_patches_1.50_synth_lid_.txt"),
                          torch.float64)
    with pytest.raises(ValueError, match="patch scale"):
        StackedExperts([eye_experts[0], scale_2])


def test_padded_stack_gives_each_member_its_own_model(eye_pdms, models_dir):
    inner = PointDistributionModel(read_pdm(models_dir / "model_inner/pdms/pdm_51_inner.txt"), torch.float64)
    pdms = [inner, *eye_pdms]
    stacked = StackedPDM(pdms, padded=True)
    assert (stacked.num_points, stacked.num_modes) == (51, 32) and stacked.sizes == [(51, 32), (28, 10), (28, 10)]
    assert stacked.points.sum(1).tolist() == [51, 28, 28]
    batch = 2
    tiled = stacked.tiled(batch)
    glob, local = params(inner, 3 * batch, 5)
    local[batch:, 10:] = 0                                                 # the eyes' padded modes
    local[batch:, :10] *= eye_pdms[0].eigenvalues.sqrt() / inner.eigenvalues[:10].sqrt()
    shape, jacobian = tiled.project_with_jacobian(glob, local)
    landmarks = shape.clone()
    for m, pdm in enumerate(pdms):
        block, (n, k) = slice(m * batch, (m + 1) * batch), stacked.sizes[m]
        own_shape, own_jacobian = pdm.project_with_jacobian(glob[block], local[block, :k])
        torch.testing.assert_close(shape[block, :n], own_shape, atol=1e-10, rtol=0)
        torch.testing.assert_close(jacobian[block, :n, :, : 6 + k], own_jacobian, atol=1e-10, rtol=0)
        assert torch.equal(jacobian[block, :, :, 6 + k:], torch.zeros_like(jacobian[block, :, :, 6 + k:]))
        landmarks[block, n:] = torch.nan                                   # padding: no landmarks there
    # CalcParams of all three from their own points: each member's own result, padded modes exactly 0
    g, p = tiled.params_from_landmarks(landmarks, stacked.points.repeat_interleave(batch, 0))
    for m, pdm in enumerate(pdms):
        block, (n, k) = slice(m * batch, (m + 1) * batch), stacked.sizes[m]
        own_g, own_p = pdm.params_from_landmarks(landmarks[block, :n])
        torch.testing.assert_close(g[block], own_g, atol=1e-7, rtol=0)
        torch.testing.assert_close(p[block, :k], own_p, atol=1e-7, rtol=0)
        assert torch.equal(p[block, k:], torch.zeros_like(p[block, k:]))
    later = stacked.tiled(batch, first=1)                                  # the eyes' faces only
    assert later.mean_shape.shape[0] == 2 * batch and torch.equal(later.eigenvalues, tiled.eigenvalues[batch:])
