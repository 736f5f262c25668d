"""fit_image_files: image files a batch at a time, in order, unreadable files reported and skipped."""
import shutil

import cv2
import numpy as np
import pytest
import torch

import torch_clnf
from reference import boxes, landmarks, rows
from torch_clnf.pipelines import fit_image_files, image_files


@pytest.fixture(scope="module")
def model(models_dir, tmp_path_factory):
    return torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def folder(media_dir, tmp_path):
    """sample1–3 as a_, c_, d_, a broken b_.jpg between them, and a text file that is no image."""
    for name, sample in (("a_sample1.jpg", "sample1.jpg"), ("c_sample2.jpg", "sample2.jpg"),
                         ("d_sample3.jpg", "sample3.jpg")):
        shutil.copy(media_dir / sample, tmp_path / name)
    (tmp_path / "b_broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("not an image either")
    return tmp_path


def test_image_files_of_a_folder_in_name_order(folder, media_dir):
    names = [p.name for p in image_files([folder, media_dir / "sample4.jpg"])]
    assert names == ["a_sample1.jpg", "b_broken.jpg", "c_sample2.jpg", "d_sample3.jpg", "sample4.jpg"]


def test_batches_in_order_with_an_unreadable_file(model, folder, reference_dir):
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:3]
    files = image_files([folder])
    per_file = torch.cat([boxes(records[:1]), torch.zeros(1, 4), boxes(records[1:])])   # the broken file's box unused
    fits = list(fit_image_files(model, files, per_file, batch=2, multi_view=False))          # the C++'s start
    assert [f.path.name for f in fits] == [p.name for p in files]
    broken = fits[1]
    assert broken.faces is None and broken.image is None and "b_broken.jpg: not a readable image file" in broken.error
    cpp = landmarks(records).float()
    for n, fit in enumerate(fits[k] for k in (0, 2, 3)):
        assert fit.error is None and fit.image.ndim == 3 and fit.image.dtype == np.uint8
        assert len(fit.faces) == 1 and fit.faces.image_index.tolist() == [0] and bool(fit.faces.success[0])
        assert (fit.faces.landmarks[0] - cpp[n]).norm(dim=-1).median() < 0.5        # its own image's C++ landmarks


def test_batches_close_at_the_pixel_budget(model, folder, reference_dir, monkeypatch):
    """Three 640x400 images, the broken one between: a budget of two images' pixels fits two, then one."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:3]
    per_file = torch.cat([boxes(records[:1]), torch.zeros(1, 4), boxes(records[1:])])
    sizes = []
    fit = model.fit

    def counted(images, *args, **kwargs):
        sizes.append(len(images))
        return fit(images, *args, **kwargs)

    monkeypatch.setattr(model, "fit", counted)
    fits = list(fit_image_files(model, image_files([folder]), per_file, batch=16, max_pixels=2 * 640 * 400,
                                multi_view=False))
    assert sizes == [2, 1]
    assert [f.faces is None for f in fits] == [False, True, False, False]
    cpp = landmarks(records).float()
    for n, k in enumerate((0, 2, 3)):
        assert (fits[k].faces.landmarks[0] - cpp[n]).norm(dim=-1).median() < 0.5
    sizes.clear()
    list(fit_image_files(model, image_files([folder]), per_file, batch=16, max_pixels=1))      # each image alone
    assert sizes == [1, 1, 1]


def test_batches_count_pixels_as_padded_to_the_largest_sides(model, media_dir, reference_dir, tmp_path, monkeypatch):
    """Two landscape images and the same turned upright: a budget of three landscape images'
    pixels holds all three side by side, but not as the fitter holds them, each padded to the
    largest height and width; the upright one starts a batch of its own."""
    image = cv2.imread(str(media_dir / "sample1.jpg"))
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "b.png"), image)
    cv2.imwrite(str(tmp_path / "c.png"), cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE))
    height, width = image.shape[:2]
    sizes = []
    fit = model.fit

    def counted(images, *args, **kwargs):
        sizes.append([im.shape[:2] for im in images])
        return fit(images, *args, **kwargs)

    monkeypatch.setattr(model, "fit", counted)
    box = boxes(rows(reference_dir / "openface_cpp/images_default.csv")[:1])[0]
    fits = list(fit_image_files(model, image_files([tmp_path]), box, batch=16, max_pixels=3 * height * width))
    assert height != width and sizes == [[(height, width), (height, width)], [(width, height)]]
    assert [f.path.name for f in fits] == ["a.png", "b.png", "c.png"]


def test_one_box_for_every_file_and_checked_shapes(model, media_dir, reference_dir):
    record = rows(reference_dir / "openface_cpp/images_default.csv")[0]
    files = [media_dir / "sample1.jpg"] * 3
    fits = list(fit_image_files(model, files, boxes([record])[0], batch=2))
    first = fits[0].faces.landmarks
    assert len(fits) == 3 and all(np.allclose(f.faces.landmarks, first, atol=0.02) for f in fits)
    with pytest.raises(ValueError, match=r"boxes: expected \(4,\) for every file or \(3, 4\)"):
        next(fit_image_files(model, files, torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="batch: expected at least 1"):
        next(fit_image_files(model, files, batch=0))


def fit_result(confidence: list[float]) -> torch_clnf.FitResult:
    """Faces with the given validator confidences (and nothing else)."""
    count = len(confidence)
    zeros = torch.zeros
    return torch_clnf.FitResult(zeros(count, 68, 2), zeros(count, 68, 3), zeros(count, 6), zeros(count, 6),
                                zeros(count, 34), torch.tensor(confidence), torch.tensor(confidence) > 0.725,
                                zeros(count), zeros(count, dtype=torch.long))


def test_kept_faces_are_the_most_confident_in_the_order_found():
    from torch_clnf.pipelines.still_images import kept_faces

    faces = fit_result([0.9, 0.5, 0.95, 0.8, 0.9])
    assert kept_faces(faces).tolist() == [0, 1, 2, 3, 4]
    assert kept_faces(faces, max_faces=2).tolist() == [0, 2]
    assert kept_faces(faces, max_faces=3).tolist() == [0, 2, 4]                 # the first found of equals
    assert kept_faces(faces, min_confidence=0.8).tolist() == [0, 2, 3, 4]
    assert kept_faces(faces, max_faces=2, min_confidence=0.92).tolist() == [2]
    assert kept_faces(faces, min_confidence=0.99).tolist() == []
    assert kept_faces(fit_result([]), max_faces=1).tolist() == []


def test_an_image_keeps_its_most_confident_faces(model, media_dir):
    """sample6, a grid of portraits: every face found is fitted and counted; three are kept."""
    (every,) = fit_image_files(model, [media_dir / "sample6.jpg"])
    (three,) = fit_image_files(model, [media_dir / "sample6.jpg"], max_faces=3)
    assert every.found == three.found == len(every.faces) > 3 and every.face_ids.tolist() == list(range(every.found))
    best = every.faces.confidence.argsort(descending=True, stable=True)[:3].sort().values
    assert three.face_ids.tolist() == best.tolist() and len(three.faces) == 3
    torch.testing.assert_close(three.faces.landmarks, every.faces.landmarks[best])
    (none,) = fit_image_files(model, [media_dir / "sample6.jpg"], min_confidence=1.01)
    assert none.found == every.found and len(none.faces) == 0 and none.face_ids.tolist() == []
