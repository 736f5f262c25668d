"""``fixed_iterations()``: the static-graph path (no host reads, export-friendly ops) gives the normal path's results."""
from __future__ import annotations

import pytest
import torch

from openface_files import write_cen_file
from torch_clnf.models import CCNFExperts, CENExperts
from torch_clnf.models.linalg import inverse, solve
from torch_clnf.models.sync import fixed_iterations, static_graph, syncs_cheaply
from torch_clnf.openface import read_ccnf, read_cen

pytestmark = pytest.mark.parity


def test_the_flag_nests_and_turns_host_reads_off():
    cpu = torch.zeros(1)
    assert not static_graph() and syncs_cheaply(cpu)
    with fixed_iterations():
        with fixed_iterations():
            assert static_graph() and not syncs_cheaply(cpu)
        assert static_graph()
    assert not static_graph() and syncs_cheaply(cpu)


def responses(experts, areas, view, landmarks=None):
    with torch.inference_mode():
        normal = experts(areas, view, landmarks)
        with fixed_iterations():
            static = experts(areas, view, landmarks)
    return normal, static


def test_ccnf_faces_gathering_their_views_match_grouping_by_view(models_dir):
    experts = CCNFExperts(read_ccnf(models_dir / "patch_experts/ccnf_patches_0.25_general.txt"))
    areas = torch.rand(5, 68, 17, 17, generator=torch.Generator().manual_seed(0)) * 255     # window 7
    view = torch.tensor([0, 3, 1, 0, 6])
    normal, static = responses(experts, areas, view)
    torch.testing.assert_close(static.maps, normal.maps, atol=1e-5, rtol=0)
    assert torch.equal(static.visible, normal.visible)
    subset = torch.tensor([3, 7, 50])
    normal, static = responses(experts, areas[:, subset, :13, :13], view, subset)
    torch.testing.assert_close(static.maps, normal.maps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_cen_faces_gathering_their_views_match_grouping_by_view(tmp_path, sparse):
    write_cen_file(tmp_path / "cen.dat", hidden=(24, 12))
    experts = CENExperts(read_cen(tmp_path / "cen.dat"), sparse=sparse)
    areas = torch.rand(4, 68, 17, 17, generator=torch.Generator().manual_seed(1)) * 255
    view = torch.tensor([2, 0, 1, 2])                   # view 2: every expert served by its mirror
    normal, static = responses(experts, areas, view)
    torch.testing.assert_close(static.maps, normal.maps, atol=1e-5, rtol=0)
    subset = torch.tensor([0, 16, 36])
    normal, static = responses(experts, areas[:, subset], view, subset)
    torch.testing.assert_close(static.maps, normal.maps, atol=1e-5, rtol=0)


def test_unrolled_solve_and_inverse_match_lapack():
    generator = torch.Generator().manual_seed(2)
    jacobian = torch.randn(3, 136, 40, generator=generator, dtype=torch.float64)
    jacobian[:, :, 0] *= 300                             # columns in very different units, as scale vs shape
    hessian = jacobian.transpose(1, 2) @ jacobian + torch.diag(torch.logspace(-2, 3, 40, dtype=torch.float64))
    rhs = torch.randn(3, 40, 1, generator=generator, dtype=torch.float64)
    similarity = torch.tensor([[[2.0, -0.5], [0.5, 2.0]]], dtype=torch.float64)
    with fixed_iterations():
        step, info = solve(hessian, rhs)
        singular, _ = solve(torch.zeros(1, 6, 6, dtype=torch.float64), torch.ones(1, 6, 1, dtype=torch.float64))
        inverted = inverse(similarity)
    torch.testing.assert_close(step, torch.linalg.solve(hessian, rhs))
    assert not info.any() and not torch.isfinite(singular).all()
    torch.testing.assert_close(inverted, torch.linalg.inv(similarity))


def test_solve_is_cholesky_and_flags_systems_that_are_not_positive_definite():
    generator = torch.Generator().manual_seed(3)
    jacobian = torch.randn(2, 136, 40, generator=generator, dtype=torch.float64)
    hessian = jacobian.transpose(1, 2) @ jacobian + torch.eye(40, dtype=torch.float64)
    hessian[1] = -hessian[1]                             # negative definite: OpenFace's Cholesky fails on it
    rhs = torch.randn(2, 40, 1, generator=generator, dtype=torch.float64)
    step, info = solve(hessian, rhs)
    torch.testing.assert_close(step[0], torch.linalg.solve(hessian[0], rhs[0]))
    assert info.tolist()[0] == 0 and info.tolist()[1] != 0
