"""Frame decoding: videos, image folders, and damaged input reported rather than raised."""
import cv2
import numpy as np

from torch_clnf.pipelines import FrameReader, video_sources


def write_video(path, frames=20, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for k in range(frames):
        writer.write(np.random.default_rng(k).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def test_video_frames_indices_and_timestamps(media_dir):
    reader = FrameReader(media_dir / "changeLighting.wmv")
    frames = list(reader)
    assert len(frames) == 88 and reader.fps == 15
    assert [f.index for f in frames] == list(range(88))
    assert frames[15].timestamp == 1.0 and frames[0].image.shape == (480, 640, 3)
    assert reader.problems == []                   # two frames short of the header's estimate is normal for WMV


def test_truncated_video_is_reported(tmp_path):
    data = write_video(tmp_path / "whole.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    reader = FrameReader(cut)
    frames = list(reader)
    assert 0 < len(frames) < 20 and all(f.image is not None for f in frames)
    assert any("ended after" in p for p in reader.problems), reader.problems


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    for path, problem in ((junk, "not a readable video"), (tmp_path / "absent.avi", "file not found")):
        reader = FrameReader(path)
        assert list(reader) == [] and not reader.readable
        assert any(problem in p for p in reader.problems)


def test_image_folder_with_a_corrupt_image(tmp_path):
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"{k:03d}.png"), np.full((20, 30, 3), k, np.uint8))
    (tmp_path / "001.png").write_bytes(b"not an image")
    frames = list(FrameReader(tmp_path))
    assert [f.image is None for f in frames] == [False, True, False]
    assert "001.png" in frames[1].error and frames[2].timestamp == 2 / 30


def test_sources_from_a_folder(tmp_path, media_dir):
    (tmp_path / "b.avi").touch()
    (tmp_path / "a.mp4").touch()
    (tmp_path / "notes.txt").touch()
    assert video_sources([tmp_path]) == [tmp_path / "a.mp4", tmp_path / "b.avi"]
    assert video_sources([media_dir / "image_sequence"]) == [media_dir / "image_sequence"]
