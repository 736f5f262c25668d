"""The CNN detection validator against OpenFace C++'s certainty and success (reference/openface_cpp)."""
import cv2
import numpy as np
import pytest
import torch

from reference import landmarks, rows
from torch_clnf.detect.validator import VALIDATION_BOUNDARY, DetectionValidator, pack_images
from torch_clnf.images import batch_images, read_image, to_grey
from torch_clnf.openface.validator import read_validator

pytestmark = pytest.mark.parity

# OpenFace's certainty is one of 30 levels 1 - (2k + 1) / 60, stored as float32.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def data(models_dir):
    return read_validator(models_dir / "detection_validation/validator_cnn.txt")


@pytest.fixture(scope="module")
def validator(data):
    return DetectionValidator(data)


@pytest.fixture(scope="module")
def samples(media_dir, reference_dir):
    """The six sample images' records (OpenFace's default fit) and grey images."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    return records, [to_grey(read_image(media_dir / r["file_or_frame"])) for r in records]


def rotations(records: list[dict]) -> torch.Tensor:
    """(B, 3) rx, ry, rz radians."""
    return torch.tensor([[float(r[k]) for k in ("rx", "ry", "rz")] for r in records], dtype=torch.float64)


def assert_matches_openface(validator, images, records, device=torch.device("cpu")):
    certainty = validator.score(images, torch.arange(len(records), device=device), landmarks(records).to(device),
                                rotations(records).to(device))
    expected = torch.tensor([float(r["certainty"]) for r in records], dtype=torch.float64)
    error = (certainty.cpu().double() - expected).abs()
    wrong = [(r["file_or_frame"], float(c), float(e)) for r, c, e in zip(records, certainty, expected) if abs(c - e) > TOLERANCE]
    assert error.max() <= TOLERANCE, wrong
    success = torch.tensor([r["success"] == "1" for r in records])
    assert ((certainty.cpu() > VALIDATION_BOUNDARY) == success).all()
    return certainty


@pytest.mark.parametrize("variant", ["default", "nohier"])
def test_images_match_openface(data, media_dir, reference_dir, device, dtype, variant):
    records = rows(reference_dir / f"openface_cpp/images_{variant}.csv")
    images = [to_grey(read_image(media_dir / r["file_or_frame"])).to(device) for r in records]
    validator = DetectionValidator(data, dtype).to(device)
    certainty = assert_matches_openface(validator, images, records, device)
    assert certainty.dtype == dtype and certainty.device.type == device.type
    assert len(set(certainty.tolist())) == 2      # one fit of each file is less certain than the rest


def test_image_sequence_matches_openface(validator, media_dir, reference_dir):
    records = rows(reference_dir / "openface_cpp/seq_image_sequence.csv")[::3]
    images = [to_grey(read_image(media_dir / f"image_sequence/{int(r['file_or_frame']) + 1:03d}.jpg")) for r in records]
    assert_matches_openface(validator, images, records)


def test_video_matches_openface(validator, media_dir, reference_dir):
    """Every 10th frame, and every frame turned more than 10° (the yaw ±20° validators)."""
    records = [r for k, r in enumerate(rows(reference_dir / "openface_cpp/video_default.csv"))
               if k % 10 == 0 or abs(float(r["ry"])) > np.deg2rad(10)]
    wanted = {int(r["file_or_frame"]) for r in records}
    capture = cv2.VideoCapture(str(media_dir / "default.wmv"))
    frames, index = {}, 0
    while index <= max(wanted):
        ok, frame = capture.read()
        assert ok, f"default.wmv ends before frame {index}"
        if index in wanted:
            frames[index] = to_grey(frame).to(torch.uint8).numpy()          # OpenFace's uint8 grey image
        index += 1
    capture.release()
    assert_matches_openface(validator, [frames[int(r["file_or_frame"])] for r in records], records)
    assert set(validator.view_index(rotations(records)).tolist()) == {0, 1, 4}


def opencv_warp(grey: np.ndarray, points: np.ndarray, warp) -> np.ndarray:
    """OpenFace's PAW on one face with cv2.remap, in float32 as its C++: (P,) the face pixels, mask column by column."""
    f32 = np.float32
    xs, ys = points[:, 0].astype(f32), points[:, 1].astype(f32)
    min_x, min_y = max(int(xs.min() - f32(3)), 0), max(int(ys.min() - f32(3)), 0)
    max_x, max_y = min(int(xs.max() + f32(3)), grey.shape[1] - 1), min(int(ys.max() + f32(3)), grey.shape[0] - 1)
    region = grey[min_y:max_y, min_x:max_x].astype(f32)
    xs, ys = xs - f32(min_x), ys - f32(min_y)
    alpha, beta = warp.alpha.astype(f32), warp.beta.astype(f32)
    coeffs = np.zeros((len(warp.triangles), 6), f32)
    for t, (i, j, k) in enumerate(warp.triangles):
        for offset, s in ((0, xs), (3, ys)):
            c1, c2, c3 = s[i], s[j] - s[i], s[k] - s[i]
            coeffs[t, offset] = c1 + c2 * alpha[t, 0] + c3 * beta[t, 0]
            coeffs[t, offset + 1] = c2 * alpha[t, 1] + c3 * beta[t, 1]
            coeffs[t, offset + 2] = c2 * alpha[t, 2] + c3 * beta[t, 2]
    h, w = warp.mask.shape
    yi, xi = np.mgrid[0:h, 0:w].astype(f32)
    xi, yi = xi + f32(warp.min_x), yi + f32(warp.min_y)
    a = coeffs[np.maximum(warp.triangle_id, 0)]
    map_x = np.where(warp.mask, a[..., 0] + a[..., 1] * xi + a[..., 2] * yi, f32(-1)).astype(f32)
    map_y = np.where(warp.mask, a[..., 3] + a[..., 4] * xi + a[..., 5] * yi, f32(-1)).astype(f32)
    # OpenCV up to 4.10 (OpenFace's builds) rounds remap's positions to 1/32 px; later versions
    # do not, so round here and remap works the same with either
    warped = cv2.remap(region, np.round(map_x * 32) / 32, np.round(map_y * 32) / 32, cv2.INTER_LINEAR)
    return warped.T[warp.mask.T]


def test_warp_matches_cv2_remap(validator, data, samples):
    """The batched gather gives cv2.remap's pixels, also for faces partly outside the image."""
    records, images = samples
    points = landmarks(records).float()
    width = points[..., 0].amax(1) - points[..., 0].amin(1)
    shifts = torch.zeros(len(records), 2)
    shifts[1, 0] = -points[1, :, 0].amin() - 0.4 * width[1]                     # across the left edge
    shifts[2, 1] = images[2].shape[0] - points[2, :, 1].amax() + 0.3 * width[2]  # across the bottom edge
    shifts[4, 0] = images[4].shape[1] - points[4, :, 0].amax() + 20.5          # across the right edge
    points = points + shifts[:, None, :]
    view = validator.view_index(rotations(records))
    flat, info = pack_images(images)
    values, box_ok = validator.warp(flat, info, points, view)
    assert box_ok.all()
    for k, image in enumerate(images):
        warp = data.views[int(view[k])].warp
        expected = opencv_warp(image.numpy().astype(np.uint8), points[k].numpy(), warp)
        np.testing.assert_allclose(values[k, :warp.num_pixels].numpy(), expected, rtol=0, atol=1e-4)
        assert (values[k, warp.num_pixels:] == 0).all()


def test_fit_off_the_face_fails(validator, samples):
    records, images = samples
    points = landmarks(records).float()
    index = torch.arange(len(records))
    width = points[..., 0].amax(1) - points[..., 0].amin(1)
    on_face = validator.score(images, index, points, rotations(records))
    assert (on_face > VALIDATION_BOUNDARY).all()
    for direction in ([1.5, 0], [-1.5, 0], [0, 1.5]):
        moved = points + width[:, None, None] * torch.tensor(direction)
        certainty = validator.score(images, index, moved, rotations(records))
        assert (certainty < VALIDATION_BOUNDARY).all() and (certainty < on_face - 0.3).all(), (direction, certainty)
        assert certainty.median() < 0.1
    blank = [torch.full_like(image, 128) for image in images]
    certainty = validator.score(blank, index, points, rotations(records))
    assert (certainty < 0.1).all(), certainty


def test_degenerate_boxes_score_zero(validator, samples):
    records, images = samples
    points = landmarks(records[:3]).float()
    points[0] -= 1000                                     # all landmarks left of and above the image
    points[1, :, 0] = images[1].shape[1] + 50             # all right of the image
    points[2, 5, 1] = float("nan")
    certainty = validator.score(images, torch.arange(3), points, rotations(records[:3]))
    assert certainty.tolist() == [0, 0, 0]


def test_batch_equals_one_at_a_time(validator, samples):
    """Several faces per image, images of different sizes, several views, uint8 or float input."""
    records, images = samples
    order = [0, 3, 3, 5, 1, 0, 4, 2]
    image_index = torch.tensor([0, 1, 1, 2, 3, 0, 4, 5])
    used = [images[k] for k in (0, 3, 5, 1, 4, 2)]
    points = landmarks([records[k] for k in order]).float()
    points[2] += 7.25                                     # a second, shifted fit in image 3
    points[5, :, 0] -= 2.5
    rotation = rotations([records[k] for k in order])
    rotation[5, 1] = np.deg2rad(-40)                      # another view for a face in image 0
    batch = validator.score(used, image_index, points, rotation)
    assert batch.shape == (8,)
    for k in range(8):
        grey = used[int(image_index[k])].numpy().astype(np.uint8)
        one = validator.score([grey], torch.tensor([0]), points[k:k + 1], rotation[k:k + 1])
        assert one.item() == batch[k].item(), k
    padded, sizes = batch_images(used, margin=12)
    assert torch.equal(validator.score(padded, image_index, points, rotation, sizes=sizes, margin=12), batch)


def test_view_index(validator, data):
    centres = torch.from_numpy(data.orientations)
    assert validator.view_index(centres).tolist() == list(range(7))
    near = centres + torch.tensor([0.05, -0.1, 0.08])
    assert validator.view_index(near).tolist() == list(range(7))
    halfway = torch.tensor([[0.0, np.deg2rad(-10), 0.0]], dtype=torch.float64)   # equidistant from views 0 and 1
    assert validator.view_index(halfway).tolist() == [0]


def test_shapes_and_errors(validator, samples):
    records, images = samples
    points, rotation = landmarks(records[:2]).float(), rotations(records[:2])
    empty = validator.score(images[:1], torch.zeros(0, dtype=torch.long), points[:0], rotation[:0])
    assert empty.shape == (0,) and empty.dtype == torch.float32
    with pytest.raises(ValueError, match="landmarks"):
        validator.score(images[:1], torch.tensor([0, 0]), points[:, :51], rotation)
    with pytest.raises(ValueError, match="rotation"):
        validator.score(images[:1], torch.tensor([0, 0]), points, rotation[:1])
    with pytest.raises(ValueError, match="image_index"):
        validator.score(images[:1], torch.tensor([0, 1]), points, rotation)
    with pytest.raises(ValueError, match="grey"):
        validator.score([np.zeros((4, 4, 3), np.uint8)], torch.tensor([0, 0]), points, rotation)
