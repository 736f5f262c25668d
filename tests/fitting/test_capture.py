"""The captured fit's padding and buckets (FitConfig.capture): on a CPU the padded static fit runs
uncompiled, which must give each face the normal fit's landmarks (float64: the static graph's
Gauss-Jordan solves instead of Cholesky differ by rounding only)."""
import warnings

import cv2
import numpy as np
import pytest
import torch

import torch_clnf
from torch_clnf.fitting import FitConfig
from torch_clnf.fitting.capture import bucket
from reference import boxes, rows


def test_buckets_are_powers_of_two():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 1000, 1024, 1025)] == [1, 2, 4, 4, 8, 8, 16, 1024, 1024, 2048]


def test_captured_fit_pads_to_a_bucket_and_gives_each_face_its_fit(models_dir, media_dir, reference_dir):
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:3]           # 3 faces: bucket 4
    images = [media_dir / r["file_or_frame"] for r in records]
    index = list(range(len(records)))
    normal, captured = (torch_clnf.load_model(models=models_dir, dtype=torch.float64, config=FitConfig(capture=capture))
                        for capture in (False, True))
    expected, found = (model.fit(images, boxes(records), image_index=index, multi_view=False)
                       for model in (normal, captured))
    assert [key[0] for key in captured.fitter._captured._graphs] == [4]            # one graph, of 4 faces
    assert found.landmarks.shape == expected.landmarks.shape == (3, 68, 2)
    distance = (found.landmarks - expected.landmarks).norm(dim=-1)
    assert distance.max() < 1e-6, distance.max()
    assert torch.equal(found.success, expected.success)
    np.testing.assert_allclose(found.likelihood.numpy(), expected.likelihood.numpy(), rtol=1e-9)


def test_a_tracked_frame_through_the_captured_fit(models_dir, media_dir):
    """Tracking (the fit's faces passed as ``active``): each face as the normal fit gives it."""
    capture = cv2.VideoCapture(str(media_dir / "default.wmv"))
    frames = [capture.read()[1] for _ in range(2)]
    normal, captured = (torch_clnf.load_model(models=models_dir, dtype=torch.float64, config=FitConfig(capture=c))
                        for c in (False, True))
    expected, found = (model.track(frames[1:], model.fit(frames[:1])) for model in (normal, captured))
    assert found.success.all() and torch.equal(found.success, expected.success)
    assert (found.landmarks - expected.landmarks).norm(dim=-1).max() < 1e-6


def test_shapes_are_compiled_on_their_second_fit_and_at_most_max_graphs(models_dir, media_dir, monkeypatch):
    """As on a GPU (the compiler faked: it counts and returns the static fit): a shape's first fit runs
    the normal fit, its second compiles the graph, which later fits replay; past MAX_GRAPHS shapes
    the others run the normal fit, with one warning. Every fit gives the normal fit's landmarks."""
    import torch_clnf.fitting.capture as capture

    compiled = []
    monkeypatch.setattr(capture.CapturedFit, "compiles", staticmethod(lambda device: True))
    monkeypatch.setattr(capture.torch, "compile", lambda fn, **kw: compiled.append(kw) or fn)
    monkeypatch.setattr(capture, "MAX_GRAPHS", 2)
    normal, captured = (torch_clnf.load_model(models=models_dir, dtype=torch.float64, config=FitConfig(capture=c))
                        for c in (False, True))
    image = cv2.imread(str(media_dir / "sample1.jpg"))
    box = torch.tensor([[110.0, 100.0, 170.0, 160.0]], dtype=torch.float64)
    crops = [image, image[:-8], image[:-16]]                                      # three image shapes
    expected = [normal.fit([im], box, multi_view=False).landmarks for im in crops]
    for rounds in (1, 2, 3):                                     # each shape fitted once per round
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = [captured.fit([im], box, multi_view=False).landmarks for im in crops]
        full = [w for w in caught if "run uncaptured" in str(w.message)]
        assert len(full) == (1 if rounds == 2 else 0)             # the third shape's second fit: once
        assert len(compiled) == (0 if rounds == 1 else 2) and all(kw["mode"] == "reduce-overhead" for kw in compiled)
        for a, b in zip(found, expected):
            assert (a - b).norm(dim=-1).max() < 1e-6
    assert len(captured.fitter._captured._graphs) == 2
