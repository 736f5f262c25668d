"""Drawing: head-pose axes projected with OpenFace's camera, landmarks and axes on the image."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import torch_clnf
from reference import boxes, rows
from torch_clnf.output import draw_landmarks, pose_axes


@pytest.fixture(scope="module")
def fitted(models_dir, media_dir, reference_dir, tmp_path_factory):
    """sample1.jpg fitted from its recorded box: (image, result)."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:1]
    model = torch_clnf.load_model(models=models_dir, cache=tmp_path_factory.mktemp("cache"))
    image = cv2.imread(str(media_dir / records[0]["file_or_frame"]))
    return image, model.fit([image], boxes(records))


def test_axes_start_at_the_projected_head_centre(fitted):
    image, result = fitted
    height, width = image.shape[:2]
    axes = pose_axes(result.pose, width, height)
    assert axes.shape == (1, 4, 2)
    # the PDM's origin projects to the 2D translation of the global params
    torch.testing.assert_close(axes[:, 0].float(), result.params_global[:, 4:], atol=1e-3, rtol=0)
    lengths = (axes[0, 1:] - axes[0, 0]).norm(dim=-1)
    assert lengths[0] > 20 and lengths[1] > 20          # x and y lie across the image ...
    assert lengths[2] < lengths[:2].min()              # ... z mostly towards the camera (a near-frontal face)


def test_a_frontal_head_has_axes_along_the_image_axes():
    pose = torch.tensor([[0.0, 0.0, 500.0, 0.0, 0.0, 0.0]])              # 500 mm in front of the camera
    axes = pose_axes(pose, 640, 480, length=50.0)[0]
    torch.testing.assert_close(axes, torch.tensor([[320.0, 240.0], [370.0, 240.0], [320.0, 290.0], [320.0, 240.0]],
                                                  dtype=axes.dtype))


def test_drawing_shows_landmarks_and_axes(fitted):
    image, result = fitted
    plain = draw_landmarks(image, result, 0, axes=False)
    drawn = draw_landmarks(image, result, 0)
    assert drawn.shape == image.shape and not np.array_equal(plain, image)
    changed = np.any(drawn != plain, axis=-1)
    assert changed.sum() > 50                           # the axes' lines
    assert np.array_equal(draw_landmarks(image, result, 1), image)       # no face in image 1: unchanged


def test_image_csv_numbers_faces_per_image(fitted, tmp_path):
    """write_image_csv: a row per face, face_id counted within its image; an image without a face has one
    row, success 0, no face_id and no landmarks (so it differs from an image not processed)."""
    import csv

    from torch_clnf.landmark_model import FitResult
    from torch_clnf.output import write_image_csv

    _, result = fitted
    three = FitResult.cat([result, result, result])
    three.image_index = torch.tensor([0, 0, 2])
    assert three.of_image(0).image_index.tolist() == [0, 0] and len(three.of_image(1)) == 0
    write_image_csv(tmp_path / "faces.csv", three, ["a.jpg", "b.jpg", "c.jpg"])
    with open(tmp_path / "faces.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["file"], r["face_id"], r["faces_found"]) for r in table] == [
        ("a.jpg", "0", "2"), ("a.jpg", "1", "2"), ("b.jpg", "", "0"), ("c.jpg", "0", "1")]
    assert float(table[3]["x_0"]) == pytest.approx(float(result.landmarks[0, 0, 0]), abs=1e-3)
    assert table[0]["success"] == "1"
    assert (table[2]["success"], table[2]["confidence"], table[2]["x_0"], table[2]["p_33"]) == ("0", "0", "", "")


def test_image_csv_of_the_faces_kept(fitted, tmp_path):
    """Rows of some of an image's faces keep their numbers and say how many it had; an image whose
    faces were all left out has the no-face row, with its count."""
    import csv

    from torch_clnf.landmark_model import FitResult
    from torch_clnf.output import ImageCSV

    _, result = fitted
    table = ImageCSV(tmp_path / "kept.csv")
    table.write("a.jpg", FitResult.cat([result, result]), face_ids=[1, 4], found=5)
    table.write("b.jpg", result[:0], face_ids=[], found=3)
    table.close()
    with open(tmp_path / "kept.csv") as f:
        rows_ = list(csv.DictReader(f))
    assert [(r["file"], r["face_id"], r["faces_found"], r["success"]) for r in rows_] == [
        ("a.jpg", "1", "5", "1"), ("a.jpg", "4", "5", "1"), ("b.jpg", "", "3", "0")]
    assert table.rows == 3
