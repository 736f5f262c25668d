import numpy as np
import pytest
import torch

from openface_files import write_cen_file
from torch_clnf.openface import read_cen


@pytest.mark.parametrize("points,hidden", [(68, (300, 100, 50)), (6, (500, 200, 100))], ids=["68pt-300-100-50", "6pt-500-200-100"])
def test_write_read_round_trip(tmp_path, points, hidden):
    written = write_cen_file(tmp_path / "cen.dat", points=points, hidden=hidden, scale=0.35)
    experts = read_cen(written.path)
    assert experts.patch_scale == 0.35
    assert (experts.num_views, experts.num_points) == (3, points)
    assert experts.support == (11, 11)
    assert experts.layer_sizes == [122, *hidden, 1]
    assert experts.activations == [2, 2, 0, 0]
    np.testing.assert_allclose(experts.view_centers.numpy(), np.deg2rad(written.centers_deg))
    np.testing.assert_array_equal(experts.visibility.numpy(), written.visibility > 0)
    np.testing.assert_array_equal(experts.mirror_inds.numpy(), written.mirror_inds)
    np.testing.assert_array_equal(experts.mirror_views.numpy(), written.mirror_views)
    np.testing.assert_array_equal(experts.confidence.numpy(), written.confidence)
    assert int((experts.expert_index >= 0).sum()) == len(written.experts)
    assert bool((experts.expert_index[2] == -1).all())  # the mirrored view is all empty
    for (v, i), layers in written.experts.items():
        e = int(experts.expert_index[v, i])
        assert e >= 0
        for k, (weight, bias) in enumerate(layers):
            assert experts.weights[k].dtype == torch.float32
            np.testing.assert_array_equal(experts.weights[k][e].numpy(), weight)
            np.testing.assert_array_equal(experts.biases[k][e].numpy(), bias)
