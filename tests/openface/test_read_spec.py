from pathlib import Path

import pytest

from openface_files import write_cen_file
from torch_clnf.openface import ModelFileError, read_main_spec, read_model, read_model_spec


def test_main_clnf_general(models_dir):
    spec = read_main_spec(models_dir / "main_clnf_general.txt")
    assert [p.name for p in spec.detector.ccnf] == [f"ccnf_patches_{s}_general.txt" for s in ("0.25", "0.35", "0.5")]
    assert spec.detector.pdm.name == "In-the-wild_aligned_PDM_68.txt"
    assert spec.detector.triangulations.name == "tris_68.txt"
    assert [p.name for p in spec.parts] == ["inner", "left_eye_28", "right_eye_28"]
    inner, left, right = spec.parts
    assert inner.mapping[:2] == ((17, 0), (18, 1)) and len(inner.mapping) == 51
    assert left.mapping == ((36, 8), (37, 10), (38, 12), (39, 14), (40, 16), (41, 18))
    assert right.mapping[0] == (42, 8) and len(right.mapping) == 6
    assert [p.name for p in inner.model.detector.ccnf] == ["ccnf_patches_1.00_inner.txt"]
    assert len(left.model.detector.ccnf) == 2
    assert spec.validator.name == "validator_cnn.txt"
    assert spec.face_detector_conversion.name == "haarAlign.txt"
    files = spec.files()
    assert len(files) == len(set(files)) and all(f.is_file() for f in files)


@pytest.mark.parametrize("name,scales", [("clnf_general.txt", 3), ("clnf_wild.txt", 4), ("clnf_multi_pie.txt", 3)])
def test_ccnf_model_specs(models_dir, name, scales):
    spec = read_model_spec(models_dir / name)
    assert len(spec.ccnf) == scales and not spec.cen and spec.pdm.is_file()


def test_ceclm_spec_names_the_missing_cen_file(models_dir):
    with pytest.raises(ModelFileError, match=r"cen_general.txt, line 3: PatchesCEN names .*cen_patches_0.25_of.dat, which does not exist"):
        read_main_spec(models_dir / "main_ceclm_general.txt")


def test_ceclm_spec_with_synthetic_cen_files(models_dir, tmp_path):
    for item in models_dir.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / "patch_experts").unlink()
    (tmp_path / "patch_experts").mkdir()
    for scale in ("0.25", "0.35", "0.50", "1.00"):
        write_cen_file(tmp_path / "patch_experts" / f"cen_patches_{scale}_of.dat", hidden=(8, 4), scale=float(scale))
    spec = read_main_spec(tmp_path / "main_ceclm_general.txt")
    assert len(spec.detector.cen) == 4 and spec.detector.early_termination.name == "early_term_cen_of.txt"
    assert [p.name for p in spec.parts] == ["left_eye_28", "right_eye_28"]
    with pytest.raises(ModelFileError, match="early_term_cen_of.txt, line 1: expected end of file after 9 numbers"):
        read_model(spec)  # the real file has 7 views' numbers, the synthetic experts 3 views
    (tmp_path / "early_term_cen_of.txt").unlink()
    (tmp_path / "early_term_cen_of.txt").write_text("1 1.1 1.2 0 0.1 0.2 -0.2 -0.1 0.3\n")
    model = read_model(spec)
    assert [e.patch_scale for e in model.cen] == [0.25, 0.35, 0.5, 1.0]
    assert model.early_termination.cutoffs.tolist() == [-0.2, -0.1, 0.3]


def test_demo_spec_names_missing_detector(models_dir):
    with pytest.raises(ModelFileError, match="AU_all_best.txt, which does not exist"):
        read_main_spec(models_dir / "main_clnf_demos.txt")


def test_svr_model_is_refused_with_a_reason(models_dir):
    spec = read_main_spec(models_dir / "main_clm_general.txt")
    assert len(spec.detector.svr) == 3
    with pytest.raises(ModelFileError, match="SVR patch experts"):
        read_model(spec)


@pytest.mark.parametrize("text,message", [
    ("LandmarkDetector clnf_general.txt\nBogusKey x\n", r"line 2: expected one of .*found 'BogusKey'"),
    ("LandmarkDetector_part model_inner/main_clnf_inner.txt inner 17 0 18\n", r"line 1: expected pairs"),
    ("LandmarkDetector_part model_inner/main_clnf_inner.txt inner 17 zero\n", r"integer landmark indices"),
    ("FaceDetConversion haarAlign.txt\n", "expected a LandmarkDetector line"),
    ("LandmarkDetector\n", r"line 1: expected a file name"),
])
def test_malformed_main_specs(models_dir, tmp_path, text, message):
    spec = Path(models_dir) / "main_clnf_general.txt"
    broken = tmp_path / "main_broken.txt"
    for item in models_dir.iterdir():
        (tmp_path / item.name).symlink_to(item)
    broken.write_text(text)
    with pytest.raises(ModelFileError, match=message):
        read_main_spec(broken)
    assert spec.is_file()


def test_part_mapping_outside_the_model(models_dir, tmp_path):
    for item in models_dir.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / "main_bad.txt").write_text(
        "LandmarkDetector clnf_general.txt\nLandmarkDetector_part model_eye/main_clnf_synth_left.txt left_eye_28 36 8 99 10\n")
    with pytest.raises(ModelFileError, match="mapping 99 -> 10 is outside"):
        read_model(tmp_path / "main_bad.txt")


def test_missing_spec_file(tmp_path):
    with pytest.raises(ModelFileError, match="file not found"):
        read_main_spec(tmp_path / "nothing.txt")
