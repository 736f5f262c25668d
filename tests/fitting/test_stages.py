"""Every phase of OpenFace C++'s fit, reproduced from the same starting state (reference/stages).

In float64, so that the bounds hold on every CPU (tests/tolerances.py): each phase starts from the
C++'s recorded state and maps, which removes the C++'s own float32 chaos from the comparison."""
import cv2
import pytest
import torch

from reference import stages
from torch_clnf.fitting import FitConfig, ModelFitter, ResponseFrame, mean_shift, nu_rlms
from torch_clnf.fitting.sampling import pad_images
from torch_clnf.weights import load_weights

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def fitter(models_dir, tmp_path_factory):
    model = load_weights("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"))
    return ModelFitter(model, FitConfig(refine_hierarchical=False), torch.float64)


@pytest.mark.parametrize("name", ["sample1_default", "sample2_nohier"])
def test_responses_and_phases_match_openface(fitter, media_dir, reference_dir, name):
    image = cv2.cvtColor(cv2.imread(str(media_dir / f"{name.split('_')[0]}.jpg")), cv2.COLOR_BGR2GRAY)  # as OpenFace
    images = pad_images(torch.from_numpy(image).double()[None])
    states, cpp_maps = stages(reference_dir / f"openface_cpp/stages/{name}.csv")
    index, active = torch.tensor([0]), torch.tensor([True])
    for before, rigid, nonrigid in zip(states[0::3], states[1::3], states[2::3]):
        assert (before["phase"], rigid["phase"], nonrigid["phase"]) == ("before", "after_rigid", "after_nonrigid")
        scale = before["scale"]
        sigma, reg, weight_factor = fitter.settings_at(scale)
        frame, view = fitter.responses(images, index, before["global"], before["local"], scale, before["window"], weight_factor)
        assert view.item() == before["view"]
        expected = torch.stack([cpp_maps[(scale, i)] for i in range(68)])[None]
        difference = (frame.maps - expected).abs().flatten(2).amax(-1)
        assert difference.median() < 1e-6 and difference.max() < 1e-3      # OpenCV's fixed-point warp reproduced
        cpp = ResponseFrame(expected, frame.visible, frame.base_shape, frame.image_to_reference,
                            frame.reference_to_image, frame.weights)
        for phase_start, phase_end, is_rigid in ((before, rigid, True), (rigid, nonrigid, False)):
            g, p, _, failed = nu_rlms(fitter.pdm, phase_start["global"], phase_start["local"], cpp, is_rigid, sigma, reg,
                                      fitter.config.iterations, active)
            assert not failed.any()
            ours = fitter.pdm.project(g, p)
            theirs = fitter.pdm.project(phase_end["global"], phase_end["local"])
            assert (ours - theirs).norm(dim=-1).max() < 0.01, (scale, "rigid" if is_rigid else "non-rigid")


def test_mean_shift_is_openfaces_table_lookup():
    """OpenFace's KDE: position clamped, kernel from a table on a 0.1 grid, shift from the clamped position."""
    torch.manual_seed(0)
    maps = torch.rand(2, 5, 9, 9, dtype=torch.float64)
    dx = torch.tensor([[-1.0, 0.04, 4.26, 8.95, 12.0]] * 2, dtype=torch.float64)
    dy = torch.tensor([[3.33, 9.5, 0.0, 4.05, -0.2]] * 2, dtype=torch.float64)
    sigma, a = 1.7, -0.5 / 1.7 ** 2
    out = mean_shift(maps, dx, dy, sigma)
    for b in range(2):
        for i in range(5):
            x, y = min(max(dx[b, i].item(), 0), 8.9), min(max(dy[b, i].item(), 0), 8.9)
            tx, ty = int(x / 0.1 + 0.5) * 0.1, int(y / 0.1 + 0.5) * 0.1
            total = mx = my = 0.0
            for row in range(9):
                for col in range(9):
                    v = maps[b, i, row, col].item() * torch.exp(torch.tensor(a * ((ty - row) ** 2 + (tx - col) ** 2))).item()
                    total, mx, my = total + v, mx + v * col, my + v * row
            assert out[b, i].tolist() == pytest.approx([mx / total - x, my / total - y], abs=1e-6)
