"""The default fit from 11 head-rotation hypotheses on the shared media: frontal faces as the single
start fits them, faces turned in the plane fitted where the single start fails."""
import cv2
import pytest
import torch

import torch_clnf
from reference import boxes, landmarks, rows
from rotated import mapped, rotated
from tolerances import FLOAT32_SPREAD_FULL_FIT

ANGLES = (30, -30, 45, -45)                 # degrees, counter-clockwise
# a turned face's landmarks against the upright fit turned likewise, median px: the image
# resampled and a detector box of another shape give another start, so not the same fit (fitted
# from the upright fit's own landmarks, the turned images give 0.1-1.6 px, sample6 4.5)
TURNED_MEDIAN = 2.0
ROUGH_MEDIAN = 5.0                          # (the worst, sample5 −45°, measured 3.8 px)
# measured with the detector-points start (docs/accuracy.md): within TURNED_MEDIAN on 13 of the 19
# turned faces MTCNN finds (0.1-1.7 px), 2.4-3.8 px on four; on sample5 turned 30° and 45° (a
# child's face rolled 16° already, tongue out) ONet's points and the box both miss, and the fit
# that passes the validator is 7 and 30 px away
ROUGH = {("sample2.jpg", -45), ("sample5.jpg", -30), ("sample5.jpg", -45), ("sample6.jpg", -45)}
MISSED = {("sample5.jpg", 30), ("sample5.jpg", 45)}
UNDETECTED = {("sample1.jpg", 45)} | {("sample4.jpg", angle) for angle in ANGLES}


@pytest.fixture(scope="module")
def model(models_dir, tmp_path_factory):
    return torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def samples(media_dir, reference_dir):
    """The six sample images (BGR) and their C++ records (box, landmarks)."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    return [cv2.imread(str(media_dir / r["file_or_frame"])) for r in records], records


@pytest.fixture(scope="module")
def upright(model, samples):
    """Per sample image, the default fit of its C++ face (the detected face nearest the C++ landmarks)."""
    images, records = samples
    fits = []
    for image, record in zip(images, records):
        found = model.fit([image])
        fits.append(found[nearest(found.landmarks, landmarks([record])[0])])
    return fits


def nearest(faces: torch.Tensor, face: torch.Tensor) -> int:
    """The face of (B, 68, 2) whose landmarks' centre is nearest that of (68, 2)."""
    return int((faces.double().mean(1) - face.double().mean(0)).norm(dim=-1).argmin())


def test_frontal_faces_give_the_single_start_landmarks(model, samples):
    """Where no other hypothesis is clearly more likely after the first scale (sample2, 4, 5 and
    6: frontal, rolled up to 15°), the frontal one is completed: the single start's landmarks, up
    to float32 rounding (the first scale runs in a batch of 11). sample1 (rolled 16°) and
    sample3 (30°) take a rolled hypothesis; both pass the validator (docs/accuracy.md)."""
    images, records = samples
    single = model.fit(images, boxes(records), multi_view=False)
    default = model.fit(images, boxes(records))
    assert default.success.tolist() == single.success.tolist() == [True] * len(images)
    frontal = [1, 3, 4, 5]
    distance = (default.landmarks[frontal] - single.landmarks[frontal]).norm(dim=-1)
    assert (distance.median(1).values <= 0.05).all() and (distance.amax(1) <= FLOAT32_SPREAD_FULL_FIT).all(), distance
    torch.testing.assert_close(default.confidence[frontal], single.confidence[frontal], atol=1e-3, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("angle", ANGLES)
def test_turned_faces_are_fitted(model, samples, upright, angle):
    """Each sample image turned in the plane and fitted as a user would (detection, then the
    default fit, which adds a start from the detector's five points to OpenFace's 11): every face
    MTCNN finds there (it finds none in turned sample4 nor in sample1 turned 45°) passes the
    validator, where the single start from the same box fails on 9 of 19; its landmarks are
    within TURNED_MEDIAN of the upright ones turned likewise, ROUGH_MEDIAN on four (ROUGH), and
    two are missed (MISSED)."""
    images, records = samples
    for image, record, before in zip(images, records, upright):
        turned, turn = rotated(image, angle)
        expected = mapped(before.landmarks[0], turn)
        found = model.fit([turned])
        if not len(found):
            assert (record["file_or_frame"], angle) in UNDETECTED
            continue
        face = found[nearest(found.landmarks, expected)]
        assert bool(face.success[0]), (record["file_or_frame"], angle, float(face.confidence[0]))
        case = (record["file_or_frame"], angle)
        if case not in MISSED:
            median = (face.landmarks[0] - expected).norm(dim=-1).median()
            assert median <= (ROUGH_MEDIAN if case in ROUGH else TURNED_MEDIAN), (case, float(median))


@pytest.mark.parity
def test_a_batch_equals_one_face_at_a_time(models_dir, samples, tmp_path):
    """float64 (tests/tolerances.py): two boxes in one image and a turned image in one batch."""
    model = torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path, dtype=torch.float64,
                                  detector=False)
    images, records = samples
    turned, turn = rotated(images[3], 30)
    corners = mapped(torch.tensor([[0.0, 0.0], [1, 0], [0, 1], [1, 1]], dtype=torch.float64) * boxes(records[3:4])[0, 2:]
                     + boxes(records[3:4])[0, :2], turn)
    turned_box = torch.cat([corners.amin(0), corners.amax(0) - corners.amin(0)])[None]
    batch = model.fit([images[0], turned], torch.cat([boxes(records[:1]), boxes(records[:1]) + 3, turned_box]),
                      image_index=[0, 0, 1])
    alone = [model.fit([images[0]], boxes(records[:1])), model.fit([images[0]], boxes(records[:1]) + 3),
             model.fit([turned], turned_box)]
    for k, one in enumerate(alone):
        assert (batch.landmarks[k] - one.landmarks[0]).abs().max() < 1e-6
        assert bool(batch.success[k]) == bool(one.success[0])


def test_faces_that_fail_from_every_hypothesis(model):
    """A box far too small and a zero-size box: every hypothesis fails; no NaN, success False."""
    blank = torch.zeros(240, 320, dtype=torch.uint8)
    with pytest.warns(UserWarning, match="less than half"):
        result = model.fit([blank, blank], torch.tensor([[100.0, 100.0, 8.0, 8.0], [10.0, 10.0, 0.0, 0.0]]),
                           image_index=[0, 1])
    assert result.success.tolist() == [False, False] and result.confidence.tolist() == [0, 0]
    assert torch.isfinite(result.landmarks[0]).all()


def test_the_detectors_points_given_with_a_box(model, samples):
    """fit(boxes, points=...): the detector's start joins the hypotheses of a box the caller gives
    (as the tracker passes a detection): sample1 turned −45° from its MTCNN box, the landmarks the
    detection itself gives (the same starts), where the box's 11 hypotheses end 38 px away."""
    images, _ = samples
    turned, _ = rotated(images[0], -45)
    (found,) = model.detect([turned])
    alone = model.fit([turned])
    given = model.fit([turned], found.boxes[:1], points=found.points[:1])
    assert (given.landmarks[0] - alone.landmarks[0]).norm(dim=-1).median() <= 0.05
    boxes_only = model.fit([turned], found.boxes[:1])
    assert (boxes_only.landmarks[0] - alone.landmarks[0]).norm(dim=-1).median() > 10
