"""output_stems: one distinct output name per input, whatever the inputs are called."""
import pytest

from torch_clnf.pipelines.outputs import output_stems


@pytest.fixture
def tree(tmp_path):
    for name in ("subj1/session.mp4", "subj2/session.mp4", "clips/clip.wmv", "clips/clip.avi", "clips/Clip.mp4",
                 "a/x.avi", "a/x_landmarks.avi"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "seq/frames").mkdir(parents=True)
    return tmp_path


def test_names_are_kept_and_relative_paths_mirrored_where_they_coincide(tree):
    out = tree / "out"
    assert output_stems([tree / "seq/frames", tree / "a/x.avi"], out) == [out / "frames", out / "x"]
    assert output_stems([tree / "a/x.avi"]) == [tree / "a/x"]                        # no folder: beside it
    assert output_stems([tree / "subj1/session.mp4", tree / "subj2/session.mp4", tree / "a/x.avi"], out) == [
        out / "subj1/session", out / "subj2/session", out / "a/x"]


def test_names_that_still_coincide_keep_their_suffix(tree):
    """clip.wmv beside clip.avi, and Clip.mp4 (one file where case is ignored: macOS, Windows)."""
    clips = [tree / "clips/clip.wmv", tree / "clips/clip.avi", tree / "clips/Clip.mp4"]
    assert output_stems(clips, tree / "out") == [tree / "out/clip_wmv", tree / "out/clip_avi", tree / "out/Clip_mp4"]
    assert output_stems(clips[:2]) == [tree / "clips/clip_wmv", tree / "clips/clip_avi"]


def test_inputs_given_twice_and_outputs_over_inputs_are_errors(tree):
    with pytest.raises(ValueError, match=r"x.avi is given twice"):
        output_stems([tree / "a/x.avi", tree / "a/../a/x.avi"])
    with pytest.raises(ValueError, match=r"x_landmarks.avi, an output of .*x.avi, would overwrite the input"):
        output_stems([tree / "a/x.avi", tree / "a/x_landmarks.avi"], None, (".csv", "_landmarks.avi"))
    assert output_stems([tree / "a/x.avi", tree / "a/x_landmarks.avi"], None, (".csv",)) == [
        tree / "a/x", tree / "a/x_landmarks"]
