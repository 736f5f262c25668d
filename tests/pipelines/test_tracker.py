"""OpenFace's video tracking, batched over streams, against OpenFace C++'s tracked landmarks."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import torch_clnf
from reference import landmarks, rows
from torch_clnf.pipelines import FrameReader, Tracker


@pytest.fixture(scope="module")
def model(models_dir, tmp_path_factory):
    return torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"))


def track(model, source, frames=None):
    """(fits per frame) tracking one source from its first frame, MTCNN and validator included."""
    tracker = Tracker(model, 1)
    fits = []
    for frame in FrameReader(source):
        if frames is not None and frame.index >= frames:
            break
        (face,) = tracker.step([frame.image])[0]
        fits.append(face)
    return fits


@pytest.mark.parametrize("source, reference", [("default.wmv", "video_default.csv"),
                                               ("changeLighting.wmv", "video_changeLighting.csv"),
                                               ("image_sequence", "seq_image_sequence.csv")])
def test_tracking_matches_openface(model, media_dir, reference_dir, source, reference):
    records = rows(reference_dir / "openface_cpp" / reference)
    fits = track(model, media_dir / source)
    assert len(fits) == len(records)
    assert fits[0].detected and fits[0].face_id == 0
    d = torch.stack([(fit.result.landmarks[0].double() - landmarks([r])[0]).norm(dim=-1) for fit, r in zip(fits, records)])
    assert d.median() <= 1.0, d.median()
    cpp_failed = torch.tensor([r["success"] == "0" for r in records])
    frame_means = d.mean(1)
    assert ((frame_means <= 3.0) | cpp_failed).all(), frame_means.max()
    ours = torch.tensor([bool(fit.result.success[0]) for fit in fits])
    assert (ours == ~cpp_failed).float().mean() >= 0.95


def test_streams_in_lockstep_equal_one_at_a_time(models_dir, media_dir, tmp_path):
    """In float64 (float32 sums in another order differ by a few hundredths of a pixel)."""
    model = torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path, dtype=torch.float64)
    sources = [media_dir / "changeLighting.wmv", media_dir / "image_sequence", media_dir / "default.wmv"]
    count = 8
    alone = [track(model, s, count) for s in sources]
    tracker = Tracker(model, len(sources))
    readers = [iter(FrameReader(s)) for s in sources]
    for k in range(count):
        # stream 1 has no frame at step 5 (its reader waits): it is left alone, then goes on one frame behind
        frames = [None if (s == 1 and k == 5) else next(r).image for s, r in enumerate(readers)]
        faces = tracker.step(frames)
        for s, fit in enumerate(faces):
            if fit is None:
                assert s == 1 and k == 5
                continue
            (fit,) = fit
            expected = alone[s][k - (1 if s == 1 and k > 5 else 0)]
            torch.testing.assert_close(fit.result.landmarks, expected.result.landmarks, atol=1e-6, rtol=0)
            assert bool(fit.result.success[0]) == bool(expected.result.success[0])


class CountingDetector(torch.nn.Module):
    """Finds nothing and counts the frames it was asked about."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def detect(self, images):
        self.calls.append(len(images))
        return [SimpleNamespace(boxes=torch.zeros(0, 4), confidence=torch.zeros(0)) for _ in images]


def test_without_a_face_detection_is_retried_every_12_frames(model):
    detector, model.detector = model.detector, CountingDetector()
    try:
        tracker = Tracker(model, 2)
        blank = np.full((120, 160, 3), 128, np.uint8)
        detected = []
        for k in range(30):
            faces = tracker.step([blank, blank])
            assert all(len(f) == 1 and f[0].result is None and f[0].face_id == -1 for f in faces)
            detected.append(faces[0][0].detected)
        assert [k for k, d in enumerate(detected) if d] == [0, 12, 24]     # OpenFace: every 6 · reinit_video_every
        assert model.detector.calls == [2, 2, 2]                          # both streams in one detector call
    finally:
        model.detector = detector


def test_step_checks_the_number_of_frames(model):
    with pytest.raises(ValueError, match="expected 2 frames"):
        Tracker(model, 2).step([None])


class FixedDetector(torch.nn.Module):
    """Finds the given boxes in every frame."""

    def __init__(self, boxes):
        super().__init__()
        self.boxes = boxes

    def detect(self, images):
        return [SimpleNamespace(boxes=self.boxes.clone(), confidence=torch.ones(len(self.boxes))) for _ in images]


def test_several_faces_per_stream(model, media_dir, reference_dir):
    """Two faces side by side: two tracks with their own ids, each fitted as OpenFace fits it from its box."""
    import cv2

    from reference import boxes
    from torch_clnf.pipelines import TrackingConfig

    records = rows(reference_dir / "openface_cpp/images_default.csv")[:2]
    left, right = (cv2.imread(str(media_dir / r["file_or_frame"])) for r in records)
    height = max(left.shape[0], right.shape[0])
    frame = np.zeros((height, left.shape[1] + right.shape[1], 3), np.uint8)
    frame[: left.shape[0], : left.shape[1]] = left
    frame[: right.shape[0], left.shape[1]:] = right
    found = boxes(records)
    found[1, 0] += left.shape[1]
    detector, model.detector = model.detector, FixedDetector(found[[1, 0]])    # the right face reported first
    try:
        tracker = Tracker(model, 1, TrackingConfig(max_faces=3))
        first = tracker.step([frame])[0]
        assert [f.face_id for f in first] == [0, 1] and all(f.detected for f in first)
        expected = landmarks(records)
        expected[1, :, 0] += left.shape[1]
        for fit, truth in zip(first, expected[[1, 0]]):
            assert (fit.result.landmarks[0].double() - truth).norm(dim=-1).median() < 0.5
        for _ in range(9):                                  # frame 8 detects again: overlapping boxes start nothing
            later = tracker.step([frame])[0]
        assert [f.face_id for f in later] == [0, 1] and not any(f.detected for f in later)
        assert all(bool(f.result.success[0]) for f in later)
    finally:
        model.detector = detector
