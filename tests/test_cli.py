from torch_clnf.cli import main


def test_convert_prints_a_summary(models_dir, tmp_path, capsys):
    assert main(["convert", "main_clnf_general.txt", "--models", str(models_dir), "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "main_clnf_general.txt: CLNF (CCNF), 68 landmarks, 34 modes, patch scales 0.25, 0.35, 0.5, " \
           "parts inner, left_eye_28, right_eye_28" in out
    assert str(tmp_path) in out
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_missing_spec_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "absent.txt"), "--cache", str(tmp_path)]) == 2
    assert "absent.txt: model spec not found" in capsys.readouterr().err


def test_broken_model_file_names_the_file(models_dir, tmp_path, capsys):
    for item in models_dir.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / "pdms").unlink()
    (tmp_path / "pdms").mkdir()
    (tmp_path / "pdms/In-the-wild_aligned_PDM_68.txt").write_text("# truncated\n204\n1\n6\n1.0\n")
    assert main(["convert", str(tmp_path / "main_clnf_general.txt"), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "In-the-wild_aligned_PDM_68.txt, line 5: file ends, expected mean shape element 1 of 204" in err
