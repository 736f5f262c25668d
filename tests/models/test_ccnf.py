"""CCNFExperts against a per-landmark NumPy float64 reference written from the definition."""
import csv
import dataclasses

import cv2
import numpy as np
import pytest
import torch

from torch_clnf.models import CCNFExperts
from torch_clnf.openface import read_ccnf

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def data(models_dir):
    return read_ccnf(models_dir / "patch_experts/ccnf_patches_0.25_general.txt")


def reference_response(data, view: int, landmark: int, area: np.ndarray) -> np.ndarray:
    """One landmark's response map, straight from the CCNF definition (float64)."""
    h, w = data.support
    win = area.shape[0] - h + 1
    if not data.visibility[view, landmark]:
        return np.zeros((win, win))
    response = np.zeros((win, win))
    for k in range(int(data.num_neurons[view, landmark])):
        alpha = float(data.alpha[view, landmark, k])
        if alpha <= 1e-4:
            continue
        weights = data.weights[view, landmark, k].numpy()
        for y in range(win):
            for x in range(win):
                window = area[y:y + h, x:x + w] - area[y:y + h, x:x + w].mean()
                norm = np.linalg.norm(window)
                window = window / (norm if norm != 0 else 1)
                z = float(data.norm_weights[view, landmark, k]) * (weights * window).sum() + float(data.bias[view, landmark, k])
                response[y, x] += 2 * alpha / (1 + np.exp(-z))
    precision = float(data.alpha[view, landmark].sum()) * np.eye(win * win)
    if win in data.sigma_components:
        comps = data.sigma_components[win].numpy()
        precision += np.tensordot(data.betas[view, landmark].numpy(), comps, axes=1)
    out = np.linalg.inv(2 * precision) @ response.reshape(-1)
    if out.min() < 0:
        out -= out.min()
    return out.reshape(win, win)


def real_areas(media_dir, reference_dir, size: int) -> np.ndarray:
    """(68, size, size) grey areas around C++'s landmarks on sample1.jpg, the image resized to
    the experts' scale (0.25 of the PDM's millimetres; no rotation, whole-pixel crops)."""
    with open(reference_dir / "openface_cpp/images_default.csv") as f:
        row = next(csv.DictReader(f))
    factor = 0.25 / float(row["scale"])
    image = cv2.imread(str(media_dir / "sample1.jpg"), cv2.IMREAD_GRAYSCALE)
    image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA).astype(np.float64)
    out = np.zeros((68, size, size))
    for i in range(68):
        x, y = round(float(row[f"x{i}"]) * factor), round(float(row[f"y{i}"]) * factor)
        out[i] = image[y - size // 2:y - size // 2 + size, x - size // 2:x - size // 2 + size]
    return out


@pytest.mark.parametrize("win", [11, 9, 7, 5])
def test_random_areas_match_reference(data, win):
    experts = CCNFExperts(data, torch.float64)
    rng = np.random.default_rng(win)
    areas = rng.uniform(0, 255, (2, 68, win + 10, win + 10))
    views = [0, 3]  # frontal, and a profile view with invisible landmarks
    out = experts(torch.from_numpy(areas), torch.tensor(views))
    assert out.maps.shape == (2, 68, win, win) and out.visible.shape == (2, 68)
    assert out.visible.sum(1).tolist() == [68, 35]
    for b, view in enumerate(views):
        for i in range(68):
            np.testing.assert_allclose(out.maps[b, i].numpy(), reference_response(data, view, i, areas[b, i]), atol=1e-6, rtol=0)


def test_real_image_areas_match_reference(data, media_dir, reference_dir):
    areas = real_areas(media_dir, reference_dir, 21)
    experts = CCNFExperts(data, torch.float64)
    out = experts(torch.from_numpy(areas)[None], torch.tensor([0]))
    for i in range(68):
        np.testing.assert_allclose(out.maps[0, i].numpy(), reference_response(data, 0, i, areas[i]), atol=1e-6, rtol=0)
    # the peak of a real face's response is near the landmark (the centre of the map)
    peaks = out.maps[0].flatten(1).argmax(1)
    distance = torch.stack([peaks // 11 - 5, peaks % 11 - 5], 1).double().norm(dim=1)
    assert distance.median() <= 2


def test_float32_close_to_float64(data, device):
    areas = torch.rand(3, 68, 21, 21, generator=torch.Generator().manual_seed(0)) * 255
    view = torch.tensor([0, 1, 6])
    exact = CCNFExperts(data, torch.float64)(areas.double(), view).maps
    fast = CCNFExperts(data, torch.float32).to(device)(areas.to(device), view.to(device)).maps.cpu()
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), exact, atol=1e-4, rtol=1e-4)


def test_batch_equals_one_at_a_time_and_subsets(data):
    experts = CCNFExperts(data, torch.float64)
    areas = torch.rand(4, 68, 19, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 255
    view = torch.tensor([0, 2, 0, 5])
    batch = experts(areas, view)
    for b in range(4):
        one = experts(areas[b:b + 1], view[b:b + 1])
        torch.testing.assert_close(one.maps[0], batch.maps[b])
    subset = torch.tensor([30, 8, 45])
    part = experts(areas[:, subset], view, landmarks=subset)
    torch.testing.assert_close(part.maps, batch.maps[:, subset])
    torch.testing.assert_close(part.visible, batch.visible[:, subset])


def test_mirrored_views_are_computed_as_their_mirror(data):
    """OpenFace's views of opposite yaw hold the same experts mirrored (to float64 rounding of the
    filters' scaling, 2e-14): a batch holding both views of a pair computes the negative-yaw faces
    on flipped areas in the other view, one convolution and Σ product fewer per pair. Each face's
    maps equal those computed alone, in its own view (float64 to 1e-12, float32 to 1e-6 of the
    maps' range: rounding of the other summation order)."""
    from torch_clnf.models.ccnf import MIRROR_68, mirrored_views

    assert mirrored_views(data) == [0, 6, 5, 4, 4, 5, 6]
    view = torch.tensor([0, 1, 6, 2, 5, 3, 4, 4])
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        experts = CCNFExperts(data, dtype)
        areas = torch.rand(8, 68, 21, 21, dtype=dtype, generator=torch.Generator().manual_seed(2)) * 255
        batch = experts(areas, view)
        alone = torch.cat([experts(areas[b:b + 1], view[b:b + 1]).maps for b in range(8)])
        assert (batch.maps - alone).abs().max() <= tolerance * alone.abs().max()
        assert torch.equal(batch.visible, experts.visible[view])
    broken = dataclasses.replace(data, bias=data.bias.clone())
    broken.bias[6, MIRROR_68[3], 0] += 1.0              # view 6 no longer view 1 mirrored: both computed as themselves
    assert mirrored_views(broken) == [0, 1, 5, 4, 4, 5, 6]


def test_bad_inputs(data):
    experts = CCNFExperts(data)
    with pytest.raises(ValueError, match=r"expected \(B, L, H, W\)"):
        experts(torch.rand(68, 21, 21), torch.tensor([0]))
    with pytest.raises(ValueError, match="expected 68 landmarks, found 60"):
        experts(torch.rand(1, 60, 21, 21), torch.tensor([0]))
    with pytest.raises(ValueError, match="one view per face"):
        experts(torch.rand(2, 68, 21, 21), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"view: expected indices in \[0, 7\)"):
        experts(torch.rand(1, 68, 21, 21), torch.tensor([7]))
    with pytest.raises(ValueError, match="square areas"):
        experts(torch.rand(1, 68, 21, 19), torch.tensor([0]))
