"""CE-CLM: the same fitter with CEN experts, run on synthetic CEN files in OpenFace's format."""
import numpy as np
import pytest
import torch

import torch_clnf
from openface_files import write_cen_file
from reference import boxes, rows

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def ceclm_dir(models_dir, tmp_path_factory):
    """OpenFace's model folder with four small synthetic CEN files (3 views) and a matching early-termination file."""
    folder = tmp_path_factory.mktemp("ceclm")
    for item in models_dir.iterdir():
        if item.name not in ("patch_experts", "early_term_cen_of.txt"):
            (folder / item.name).symlink_to(item)
    (folder / "patch_experts").mkdir()
    for k, scale in enumerate(("0.25", "0.35", "0.50", "1.00")):
        write_cen_file(folder / "patch_experts" / f"cen_patches_{scale}_of.dat", hidden=(24, 12), scale=float(scale), seed=k)
    (folder / "early_term_cen_of.txt").write_text("1 1 1\n0 0 0\n-1 -1 -1\n")
    return folder


def test_ceclm_model_fits_with_openfaces_parameter_changes(ceclm_dir, media_dir, reference_dir, tmp_path):
    model = torch_clnf.load_model("main_ceclm_general.txt", models=ceclm_dir, cache=tmp_path, dtype=torch.float64)
    assert model.is_ceclm
    assert model.config.sigma == pytest.approx(1.5 * 1.5) and model.config.reg_factor == pytest.approx(0.9 * 25)
    assert [e.patch_scale for e in model.fitter.experts] == [0.25, 0.35, 0.5, 1.0]
    assert model.fitter.part_names == ["left_eye_28", "right_eye_28"]
    assert all(e.sparse for e in model.fitter.experts)
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:2]
    images = [media_dir / r["file_or_frame"] for r in records]
    batch = model.fit(images, boxes(records), multi_view=False)
    assert batch.landmarks.shape == (2, 68, 2)
    assert torch.isfinite(batch.landmarks).all() and torch.isfinite(batch.params_global).all()
    single = model.fit(images[1:], boxes(records[1:]), multi_view=False)
    assert (single.landmarks[0] - batch.landmarks[1]).abs().max() < 1e-6      # float64: tests/tolerances.py
    tracked = model.track(images[:1], batch[0])
    assert torch.isfinite(tracked.landmarks).all()


def test_ceclm_dense_and_sparse_agree_roughly(ceclm_dir, media_dir, reference_dir, tmp_path):
    model = torch_clnf.load_model("main_ceclm_general.txt", models=ceclm_dir, cache=tmp_path)
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:1]
    sparse = model.fit([media_dir / records[0]["file_or_frame"]], boxes(records), multi_view=False)
    for experts in model.fitter.experts:
        experts.sparse = False
    dense = model.fit([media_dir / records[0]["file_or_frame"]], boxes(records), multi_view=False)
    assert not torch.equal(sparse.landmarks, dense.landmarks)
    assert np.isfinite(dense.landmarks.numpy()).all()


def test_multi_view_stops_at_the_first_hypothesis_that_passes_early_termination(ceclm_dir, media_dir, reference_dir,
                                                                                 tmp_path):
    """With every cutoff below any likelihood, OpenFace's CE-CLM search completes the frontal
    hypothesis alone: the plain fit from the box."""
    folder = tmp_path / "models"
    folder.mkdir()
    for item in ceclm_dir.iterdir():
        if item.name != "early_term_cen_of.txt":
            (folder / item.name).symlink_to(item.resolve())
    (folder / "early_term_cen_of.txt").write_text("1 1 1\n0 0 0\n-1e30 -1e30 -1e30\n")
    model = torch_clnf.load_model("main_ceclm_general.txt", models=folder, cache=tmp_path / "cache", dtype=torch.float64)
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:2]
    images = [media_dir / r["file_or_frame"] for r in records]
    plain = model.fit(images, boxes(records), multi_view=False)
    searched = model.fit(images, boxes(records), multi_view=True)
    torch.testing.assert_close(searched.landmarks, plain.landmarks, atol=1e-6, rtol=0)
    assert searched.success.tolist() == plain.success.tolist()


def test_ceclm_with_bfloat16_layers_stays_near_the_float32_fit(ceclm_dir, media_dir, reference_dir, tmp_path,
                                                               monkeypatch):
    """FitConfig(cen_bfloat16=True): the CEN layers in bfloat16 (forced here on every CPU; where the CPU
    lacks native bfloat16 products a real run keeps float32), landmarks near the float32 fit's."""
    monkeypatch.setattr("torch_clnf.models.cen._native_bfloat16", lambda device_type: True)
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:3]
    images = [media_dir / r["file_or_frame"] for r in records]
    exact = torch_clnf.load_model("main_ceclm_general.txt", models=ceclm_dir, cache=tmp_path)
    fast = torch_clnf.load_model("main_ceclm_general.txt", models=ceclm_dir, cache=tmp_path,
                                 config=torch_clnf.FitConfig(cen_bfloat16=True))
    assert all(e.products_dtype() == torch.bfloat16 for e in fast.fitter.experts)
    assert all(e.products_dtype() == torch.float32 for e in exact.fitter.experts)
    expected = exact.fit(images, boxes(records), multi_view=False).landmarks
    landmarks = fast.fit(images, boxes(records), multi_view=False).landmarks
    assert landmarks.dtype == torch.float32
    # these small random experts' flat maps make the fit ~10x more sensitive than full-size ones
    # (docs/speed.md): 0.05-0.06 px median, 0.34-0.43 px at most under AVX-512 and AVX2 kernels
    distance = (landmarks - expected).norm(dim=-1)
    assert 0 < distance.max() < 1.5 and distance.median() < 0.2
