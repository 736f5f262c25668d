"""The public API against OpenFace C++'s landmarks on the shared media (reference/openface_cpp)."""
import dataclasses

import cv2
import numpy as np
import pytest
import torch

import torch_clnf
from reference import boxes, landmarks, rows
from tolerances import FLOAT32_SPREAD_FULL_FIT, FLOAT32_SPREAD_FULL_FIT_MEDIAN, FLOAT32_SPREAD_TRACKING_FRAME
from torch_clnf.fitting import FitConfig

# float64 fits against the C++'s, per image, px (measured: medians up to 0.045, maxima up to 0.29,
# on sample5, whose float32 C++ fit is itself chaotic)
FLOAT64_IMAGE_MEDIAN = 0.05
FLOAT64_IMAGE_MAX = 0.35


@pytest.fixture(scope="module")
def model(models_dir, tmp_path_factory):
    return torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def model64(models_dir, tmp_path_factory):
    """float64: a batch, or sums in another order, give the same landmarks on every CPU (tests/tolerances.py)."""
    return torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"),
                                 dtype=torch.float64)


def distances(result, records) -> torch.Tensor:
    return (result.landmarks.double() - landmarks(records)).norm(dim=-1)


def fit_reference_images(model, media_dir, reference_dir, variant):
    """OpenFace's six sample images fitted from the C++'s boxes, with or without the part models."""
    records = rows(reference_dir / f"openface_cpp/images_{variant}.csv")
    config = dataclasses.replace(model.config, refine_hierarchical=variant == "default")
    fitter_config, model.fitter.config = model.fitter.config, config
    try:
        return model.fit([media_dir / r["file_or_frame"] for r in records], boxes(records), multi_view=False), records
    finally:
        model.fitter.config = fitter_config


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["default", "nohier"])
def test_images_match_openface(model, media_dir, reference_dir, variant):
    """float32: per image, the float64 bounds plus twice what float32 rounding alone moves the fit
    (tests/tolerances.py)."""
    result, records = fit_reference_images(model, media_dir, reference_dir, variant)
    d = distances(result, records)
    assert (d.median(1).values <= FLOAT64_IMAGE_MEDIAN + 2 * FLOAT32_SPREAD_FULL_FIT_MEDIAN).all(), d.median(1).values
    assert (d.amax(1) <= FLOAT64_IMAGE_MAX + 2 * FLOAT32_SPREAD_FULL_FIT).all(), d.amax(1)
    assert result.success.all()
    assert result.landmarks.shape == (6, 68, 2) and result.landmarks_3d.shape == (6, 68, 3)
    assert result.pose.shape == (6, 6) and result.params_local.shape == (6, 34)
    torch.testing.assert_close(result.pose[:, 3:], result.params_global[:, 1:4])


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["default", "nohier"])
def test_images_match_openface_in_float64(model64, media_dir, reference_dir, variant):
    """float64: the same on every CPU, so the README's accuracy table holds as measured; success
    and the validator's certainty as the C++'s."""
    result, records = fit_reference_images(model64, media_dir, reference_dir, variant)
    d = distances(result, records)
    assert (d.median(1).values <= FLOAT64_IMAGE_MEDIAN).all(), d.median(1).values
    assert (d.amax(1) <= FLOAT64_IMAGE_MAX).all(), d.amax(1)
    assert result.success.tolist() == [r["success"] == "1" for r in records]
    expected = torch.tensor([float(r["certainty"]) for r in records], dtype=torch.float64)
    torch.testing.assert_close(result.confidence, expected, atol=1e-3, rtol=0)


@pytest.mark.parity
def test_image_sequence_tracking_matches_openface(model, media_dir, reference_dir):
    """fit, then track, frame by frame (float32: each frame's mean within the float64 tracking
    bound of tests/pipelines/test_tracker.py plus twice float32's spread)."""
    records = rows(reference_dir / "openface_cpp/seq_image_sequence.csv")
    result = None
    for r in records:
        frame = media_dir / f"image_sequence/{int(r['file_or_frame']) + 1:03d}.jpg"
        if result is None:
            result = model.fit([frame], boxes(records[:1]), multi_view=True)   # as OpenFace's first video frame
        else:
            result = model.track([frame], result)
        d = distances(result, [r])
        assert d.mean() <= 0.5 + 2 * FLOAT32_SPREAD_TRACKING_FRAME, (r["file_or_frame"], d.mean().item())


@pytest.mark.parity
def test_batch_equals_one_at_a_time(model64, media_dir, reference_dir):
    model = model64
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    images = [cv2.imread(str(media_dir / r["file_or_frame"])) for r in records]
    # two boxes in one image, and an image of another size, in one batch
    batch = model.fit([images[0], images[3]], torch.cat([boxes(records[:1]), boxes(records[:1]) + 1, boxes(records[3:4])]),
                      image_index=[0, 0, 1], multi_view=False)
    one = model.fit([images[0]], boxes(records[:1]), multi_view=False)
    shifted = model.fit([images[0]], boxes(records[:1]) + 1, multi_view=False)
    other = model.fit([images[3]], boxes(records[3:4]), multi_view=False)
    for k, single in enumerate((one, shifted, other)):
        assert (batch.landmarks[k] - single.landmarks[0]).abs().max() < 1e-6
    assert batch.image_index.tolist() == [0, 0, 1]


def test_refine_from_perturbed_landmarks(model, media_dir, reference_dir):
    """Another detector's landmarks, 5 px off on average per axis, are pulled back towards OpenFace's fit."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    truth = landmarks(records).float()
    noisy = truth + torch.randn(truth.shape, generator=torch.Generator().manual_seed(0)) * 5
    result = model.refine([media_dir / r["file_or_frame"] for r in records], noisy)
    before, after = (noisy - truth).norm(dim=-1).mean(), (result.landmarks - truth).norm(dim=-1).mean()
    assert after < 0.5 * before, (before, after)


def test_refine_with_missing_points(model64, media_dir, reference_dir):
    """Landmarks with points missing (NaN): every 7th point of five faces, the whole jaw of one.
    The start is fitted to the given points, and the fits land where they land from all points:
    the same within rounding where few points are missing, close where the jaw is (float64, so
    that the comparison is of the two starts, not of float32 rounding: tests/tolerances.py)."""
    model = model64
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    given = landmarks(records).float()
    missing = given.clone()
    missing[1, :17] = float("nan")
    missing[[0, 2, 3, 4, 5], ::7] = float("nan")
    images = [media_dir / r["file_or_frame"] for r in records]
    full, partial = model.refine(images, given), model.refine(images, missing)
    assert partial.success.tolist() == full.success.tolist() == [True] * len(records)
    assert torch.isfinite(partial.landmarks).all() and torch.isfinite(partial.params_local).all()
    median = (partial.landmarks - full.landmarks).norm(dim=-1).median(1).values
    assert median[[0, 2, 3, 4, 5]].max() < 0.1 and median[1] < 0.5, median


def test_no_faces_give_an_empty_result(model):
    """No boxes, no landmarks, no previous faces (a frame where another detector found none):
    empty results of the right shapes, as when MTCNN finds no face."""
    image = np.zeros((100, 120), np.uint8)
    none = model.fit([image], torch.zeros(0, 4), image_index=[])
    refined = model.refine([image], torch.zeros(0, 68, 2), image_index=[])
    tracked = model.track([image], none, image_index=[])
    detected = model.fit([image])
    for result in (none, refined, tracked, detected):
        assert len(result) == 0 and result.landmarks.shape == (0, 68, 2) and result.params_local.shape == (0, 34)
        assert result.landmarks_3d.shape == (0, 68, 3) and result.success.shape == result.image_index.shape == (0,)


def test_tensor_and_grey_inputs_agree(model, media_dir, reference_dir):
    record = rows(reference_dir / "openface_cpp/images_default.csv")[1]
    bgr = cv2.imread(str(media_dir / record["file_or_frame"]))
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    box = boxes([record])
    from_path = model.fit(media_dir / record["file_or_frame"], box)
    for image in (bgr, grey, torch.from_numpy(grey), torch.from_numpy(bgr).permute(2, 0, 1)):
        torch.testing.assert_close(model.fit([image], box).landmarks, from_path.landmarks)


def test_bad_inputs_give_clear_errors(model, tmp_path):
    image = np.zeros((100, 100), np.uint8)
    with pytest.raises(ValueError, match="2 faces for 1 images: pass image_index"):
        model.fit([image], torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"image_index: expected 1 indices in \[0, 1\)"):
        model.fit([image], torch.zeros(1, 4), image_index=[3])
    with pytest.raises(ValueError, match="image 0: .*not a readable image file"):
        model.fit([tmp_path / "missing.jpg"], torch.tensor([[0, 0, 10, 10]]))
    with pytest.raises(ValueError, match="image 0: expected a non-empty image"):
        model.fit([np.zeros((0, 5), np.uint8)], torch.tensor([[0, 0, 10, 10]]))
    with pytest.raises(ValueError, match="image 0: the image has NaN"):
        model.fit([np.full((50, 50), np.nan, np.float32)], torch.tensor([[0, 0, 10, 10]]))
    with pytest.raises(ValueError, match=r"boxes: expected \(B, 4\)"):
        model.fit([image, image], torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"landmarks: expected \(B, 68, 2\)"):
        model.refine([image], torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match=r"points: expected \(1, 5, 2\), the detector's five points of each box"):
        model.fit([image], torch.tensor([[0, 0, 10, 10]]), points=torch.zeros(1, 68, 2))
    with pytest.raises(ValueError, match=r"boxes: expected finite x, y, width, height; not finite: box\(es\) \[1\]"):
        model.fit([image, image], torch.tensor([[0, 0, 10, 10], [float("nan"), 0, 10, 10]]))
    few = torch.full((2, 68, 2), float("nan"))
    few[:, :3] = torch.tensor([[0.0, 0], [10, 0], [0, 10]])
    few[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"landmarks: expected at least 3 finite points per face; fewer in face\(s\) \[1\]"):
        model.refine([image, image], few)


def test_faces_that_fail_are_reported(model):
    """A box far too small for the experts, a zero-size box, and a blank image: no exception,
    success False for the failed faces, and no NaN in any face's output. The fit on the blank
    image converges (OpenFace's fit succeeds) but the validator sees no face there."""
    blank = np.zeros((240, 320), np.uint8)
    with pytest.warns(UserWarning, match=r"less than half of 1 face box\(es\) lies inside its image: box 2"):
        result = model.fit([blank, blank, blank], torch.tensor([[100.0, 100.0, 8.0, 8.0], [40.0, 40.0, 150.0, 150.0],
                                                                [10.0, 10.0, 0.0, 0.0]]), image_index=[0, 1, 2],
                           multi_view=False)
    assert result.success.tolist() == [False, False, False]
    assert result.confidence[0] == 0 and result.confidence[2] == 0            # failed fits are not validated
    assert 0 < result.confidence[1] < 0.725
    assert torch.isfinite(result.landmarks[:2]).all() and torch.isfinite(result.params_global[:2]).all()
    validate = dataclasses.replace(model.config, validate=False)
    config, model.config = model.config, validate
    try:
        unvalidated = model.fit([blank], torch.tensor([[40.0, 40.0, 150.0, 150.0]]), multi_view=False)
    finally:
        model.config = config
    assert unvalidated.success.tolist() == [True] and unvalidated.confidence.tolist() == [1.0]


def test_float64_and_config(models_dir, media_dir, reference_dir, tmp_path):
    records = rows(reference_dir / "openface_cpp/images_nohier.csv")[1:2]
    model = torch_clnf.load_model("main_clnf_general.txt", models=models_dir, dtype=torch.float64, cache=tmp_path,
                                  config=FitConfig(refine_hierarchical=False))
    result = model.fit([media_dir / records[0]["file_or_frame"]], boxes(records), multi_view=False)
    assert result.landmarks.dtype == torch.float64
    assert distances(result, records).median() < 0.05


@pytest.mark.parity
def test_track_refits_failed_faces_from_scratch_windows(model64, media_dir, reference_dir):
    """A face whose previous fit failed is refitted with the full window sizes, the others tracked."""
    model = model64
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:1]
    image = cv2.imread(str(media_dir / records[0]["file_or_frame"]))
    first = model.fit([image, image], torch.cat([boxes(records), torch.tensor([[5.0, 5.0, 6.0, 6.0]])]),
                      image_index=[0, 0], multi_view=False)
    assert first.success.tolist() == [True, False]
    again = model.track([image], first, image_index=[0, 0])
    tracked_alone = model.track([image], first[0])
    torch.testing.assert_close(again.landmarks[0], tracked_alone.landmarks[0], atol=1e-6, rtol=0)
    assert len(again) == 2 and again.image_index.tolist() == [0, 0]
