"""The two eye models refitted as one stacked batch give the landmarks of fitting them one after the other."""
from __future__ import annotations

import cv2
import pytest
import torch

import torch_clnf
from reference import boxes, rows

pytestmark = pytest.mark.parity


def test_eyes_are_stacked_and_fit_as_one_after_the_other(models_dir, media_dir, reference_dir, tmp_path, monkeypatch):
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    images = [cv2.imread(str(media_dir / r["file_or_frame"]), cv2.IMREAD_GRAYSCALE) for r in records]
    model = torch_clnf.load_model(models=models_dir, cache=tmp_path, dtype=torch.float64, detector=False)
    fitter = model.fitter
    assert fitter.part_names == ["inner", "left_eye_28", "right_eye_28"]
    assert fitter.part_groups == [[0], [1, 2]]
    monkeypatch.setattr(fitter, "joint_parts_max_faces", 0)             # each group on its own (see test_parts)
    stacked = model.fit(images, boxes(records), multi_view=False)
    fitter.part_groups = [[0], [1], [2]]                                 # OpenFace's order: one part at a time
    sequential = model.fit(images, boxes(records), multi_view=False)
    assert (stacked.landmarks - sequential.landmarks).norm(dim=-1).max() < 1e-6
    assert torch.equal(stacked.success, sequential.success)
