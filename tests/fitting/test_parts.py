"""The part models of a few faces refitted as one padded batch give each part's own refit."""
from __future__ import annotations

import cv2
import pytest
import torch

import torch_clnf
from reference import boxes, rows

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def model(models_dir, tmp_path_factory):
    return torch_clnf.load_model(models=models_dir, cache=tmp_path_factory.mktemp("cache"), dtype=torch.float64,
                                 detector=False)


@pytest.fixture(scope="module")
def faces(media_dir, reference_dir):
    """The six sample faces, and sample1's face at a third of its size (too small for the part
    models: OpenFace refits a part only where the face's scale exceeds 0.9 × its patch scale)."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")
    images = [cv2.imread(str(media_dir / r["file_or_frame"]), cv2.IMREAD_GRAYSCALE) for r in records]
    small = cv2.resize(images[0], None, fx=1 / 3, fy=1 / 3, interpolation=cv2.INTER_AREA)
    face_boxes = torch.cat([boxes(records), boxes(records[:1]) / 3])
    return images + [small], face_boxes


def test_joint_parts_equal_each_group_fitted_alone(model, faces, monkeypatch):
    images, face_boxes = faces
    fitter = model.fitter
    assert fitter.joint_parts is not None and len(images) <= fitter.joint_parts_max_faces
    assert fitter.joint_parts.order == [0, 1]                            # the inner face (one scale) first
    assert fitter.joint_parts.pdm.sizes == [(51, 32), (28, 10), (28, 10)]
    joint = model.fit(images, face_boxes, multi_view=False)
    scales = joint.params_global[:, 0]
    assert (scales > 1.0 * 0.9).any() and (scales <= 0.9).any()          # faces with and without part refits
    monkeypatch.setattr(fitter, "joint_parts_max_faces", 0)
    alone = model.fit(images, face_boxes, multi_view=False)
    assert (joint.landmarks - alone.landmarks).norm(dim=-1).max() < 1e-9
    assert torch.equal(joint.success, alone.success)
    torch.testing.assert_close(joint.params_local, alone.params_local, rtol=0, atol=1e-9)


def test_large_batches_fit_each_group_alone(model, faces, monkeypatch):
    images, face_boxes = faces
    calls = []
    monkeypatch.setattr(model.fitter.joint_parts, "fit", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(model.fitter, "joint_parts_max_faces", 2)
    model.fit(images[:3], face_boxes[:3], multi_view=False)
    assert calls == []


def test_joint_refit_of_a_batch_equals_one_face_at_a_time(model, faces):
    images, face_boxes = faces
    batch = model.fit(images[:3], face_boxes[:3], multi_view=False)
    for k in range(3):
        one = model.fit(images[k:k + 1], face_boxes[k:k + 1], multi_view=False)
        assert (batch.landmarks[k] - one.landmarks[0]).norm(dim=-1).max() < 1e-9
