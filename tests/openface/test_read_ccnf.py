import struct

import numpy as np
import pytest
import torch

from openface_files import write_ccnf_file
from torch_clnf.openface import read_ccnf

GENERAL = [f"patch_experts/ccnf_patches_{s}_{kind}.txt" for kind in ("general", "multi_pie") for s in ("0.25", "0.35", "0.5")]
WILD = [f"patch_experts/ccnf_patches_{s}_wild.txt" for s in ("0.25", "0.35", "0.5", "1")]
PARTS = ["model_inner/patch_experts/ccnf_patches_1.00_inner.txt"] + [
    f"model_eye/patch_experts/{side}ccnf_patches_{s}_synth_lid_.txt" for side in ("", "left_") for s in ("1.00", "1.50")]
# (views, points, visible landmarks per view)
LAYOUT = {**{f: (7, 68, [68, 68, 68, 35, 35, 68, 68]) for f in GENERAL},
          **{f: (3, 68, [68, 68, 68]) for f in WILD}, PARTS[0]: (7, 51, None),
          **{f: (1, 28, [28]) for f in PARTS[1:]}}


@pytest.mark.parametrize("name", list(LAYOUT), ids=[n.split("/")[-1] for n in LAYOUT])
def test_every_ccnf_file(models_dir, name):
    experts = read_ccnf(models_dir / name)
    views, points, visible = LAYOUT[name]
    assert (experts.num_views, experts.num_points) == (views, points)
    assert experts.support == (11, 11)
    assert experts.view_centers.shape == (views, 3)
    assert experts.view_centers.abs().max() <= np.deg2rad(90)
    if visible is not None:
        assert experts.visibility.sum(1).tolist() == visible
    assert bool((experts.num_neurons[experts.visibility] == 7).all())
    assert experts.weights.shape == (views, points, 7, 11, 11)
    for win, comps in experts.sigma_components.items():
        assert comps.shape[1:] == (win * win, win * win)
        assert comps.shape[0] == experts.betas.shape[-1]
    assert torch.isfinite(experts.weights).all() and torch.isfinite(experts.alpha).all()
    assert bool((experts.alpha[experts.visibility] >= 0).all())


def test_general_layout_and_first_neuron_bytes(models_dir):
    path = models_dir / "patch_experts/ccnf_patches_0.25_general.txt"
    experts = read_ccnf(path)
    assert experts.patch_scale == 0.25
    assert experts.window_sizes == [7, 9, 11, 15]
    assert experts.betas.shape == (7, 68, 3)
    torch.testing.assert_close(experts.view_centers[:, 1], torch.deg2rad(torch.tensor(
        [0.0, -20, -45, -70, 70, 45, 20], dtype=torch.float64)), atol=1e-9, rtol=0)
    # parse the first expert's first neuron by hand: after the header (scale, views, 7 centres,
    # 7 visibilities, window sizes and Σ components) come int32 5, width, height, count, then
    # int32 2, kind, float64 norm weight, bias, alpha, and the 11x11 float32 weights.
    data = path.read_bytes()
    offset = 8 + 4 + 7 * (12 + 24) + 7 * (12 + 68 * 4) + 4
    for win in (7, 9, 11, 15):
        offset += 8 + 3 * (12 + win ** 4 * 4)
    assert struct.unpack_from("<iiii", data, offset) == (5, 11, 11, 7)
    kind_and_values = struct.unpack_from("<iiddd", data, offset + 16)
    weights = np.frombuffer(data, "<f4", 121, offset + 16 + 32 + 12).reshape(11, 11)
    assert kind_and_values[:2] == (2, 0)
    assert experts.norm_weights[0, 0, 0].item() == kind_and_values[2]
    assert experts.bias[0, 0, 0].item() == kind_and_values[3]
    assert experts.alpha[0, 0, 0].item() == kind_and_values[4]
    np.testing.assert_array_equal(experts.weights[0, 0, 0].numpy(), weights)


def test_synthetic_ccnf_round_trip(tmp_path):
    written = write_ccnf_file(tmp_path / "small.txt", points=3, views=2, neurons=2)
    experts = read_ccnf(written.path)
    assert experts.window_sizes == written.windows
    assert experts.visibility.tolist() == [[True, True, True], [False, True, True]]
    assert experts.num_neurons.tolist() == [[2, 2, 2], [0, 2, 2]]
    assert experts.sigma_components[5].shape == (3, 25, 25)
