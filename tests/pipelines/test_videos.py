"""track_videos: many videos in lockstep, one OpenFace-style CSV each, damage reported per video."""
import csv
import functools

import cv2
import numpy as np
import pytest
import torch

import torch_clnf
from crashes import failing_worker_model
from reference import landmarks, rows
from torch_clnf.output import openface_columns
from torch_clnf.pipelines import Tracker, track_videos, track_videos_in_processes
from torch_clnf.pipelines.workers import share_videos


@pytest.fixture(scope="module")
def model(models_dir, tmp_path_factory):
    return torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def model64(models_dir, tmp_path_factory):
    """In float64, where a batch summed in another order gives the same landmarks on every CPU
    (in float32 it can cross the fit's discontinuities: tests/tolerances.py)."""
    return torch_clnf.load_model("main_clnf_general.txt", models=models_dir, cache=tmp_path_factory.mktemp("cache"),
                                 dtype=torch.float64)


# the CSV's landmarks have 6 significant digits: 0.001 px for a frame under 1000 px wide
CSV_PRECISION = 1e-3


def noise_video(path, frames=20):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for k in range(frames):
        writer.write(np.random.default_rng(k).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    return path


def image_folder(video, folder, count):
    """The first ``count`` frames of ``video`` as PNG files in ``folder`` (an image sequence)."""
    folder.mkdir()
    capture = cv2.VideoCapture(str(video))
    for k in range(count):
        cv2.imwrite(str(folder / f"{k:03d}.png"), capture.read()[1])
    return folder


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def points(row):
    return torch.tensor([[float(row[f"x_{i}"]), float(row[f"y_{i}"])] for i in range(68)], dtype=torch.float64)


def test_videos_in_lockstep_with_damaged_ones(model, media_dir, reference_dir, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    data = noise_video(tmp_path / "whole.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    sources = [media_dir / "changeLighting.wmv", junk, tmp_path / "cut.avi"]
    summaries = track_videos(sources, model, tmp_path / "out", streams=3, progress=False)
    good, bad, cut = summaries
    assert [s.source for s in summaries] == sources

    table = read_csv(tmp_path / "out/changeLighting.csv")
    assert list(table[0]) == ["frame", "face_id", "timestamp"] + openface_columns()
    assert good.frames == len(table) == 88 and good.problems == [] and good.tracked >= 84
    assert [r["frame"] for r in table[:3]] == ["1", "2", "3"] and table[15]["timestamp"] == "1.000"
    reference = rows(reference_dir / "openface_cpp/video_changeLighting.csv")
    d = torch.stack([(points(r) - landmarks([c])[0]).norm(dim=-1) for r, c in zip(table, reference)])
    assert d.median() <= 1.0

    assert bad.csv is None and bad.frames == 0 and "not a readable video" in bad.problems[0]
    cut_rows = read_csv(tmp_path / "out/cut.csv")
    assert 0 < cut.frames == len(cut_rows) < 20 and all(r["success"] == "0" for r in cut_rows)
    assert any("ended after" in p for p in cut.problems)
    assert "changeLighting.wmv: 88 frames" in good.line()


@pytest.mark.parity
def test_lockstep_csv_equals_one_video_at_a_time(model64, media_dir, tmp_path):
    """The same rows whether two videos share a batch or not."""
    frames = image_folder(media_dir / "default.wmv", tmp_path / "frames", 15)
    sources = [media_dir / "image_sequence", frames]
    track_videos(sources, model64, tmp_path / "together", streams=2, progress=False)
    track_videos(sources, model64, tmp_path / "apart", streams=1, progress=False)
    for name in ("image_sequence.csv", "frames.csv"):
        together, apart = read_csv(tmp_path / "together" / name), read_csv(tmp_path / "apart" / name)
        assert len(together) == len(apart) > 0
        for a, b in zip(together, apart):
            assert a["success"] == b["success"] and a["face_id"] == b["face_id"]
            torch.testing.assert_close(points(a), points(b), atol=CSV_PRECISION, rtol=0)


def test_a_failing_video_does_not_stop_the_others(model, media_dir, tmp_path, monkeypatch):
    """A frame that cannot be fitted gets a success-0 row; ten in a row end that video only."""
    step = Tracker.step

    def failing_step(self, frames):
        if any(f is not None and f.shape[:2] == (64, 96) for f in frames):
            raise RuntimeError("simulated failure")
        return step(self, frames)

    monkeypatch.setattr(Tracker, "step", failing_step)
    noise = noise_video(tmp_path / "noise.avi")
    summaries = track_videos([noise, media_dir / "image_sequence"], model, tmp_path / "out", streams=2, progress=False)
    assert "frame 1 could not be fitted: RuntimeError: simulated failure" in summaries[0].problems
    assert "stopped at frame 10 after 10 failed frames in a row" in summaries[0].problems
    noise_rows = read_csv(tmp_path / "out/noise.csv")
    assert len(noise_rows) == 10 and all(r["success"] == "0" for r in noise_rows)
    assert summaries[1].problems == [] and len(read_csv(tmp_path / "out/image_sequence.csv")) == 30
    assert summaries[1].tracked == 30


@pytest.mark.parity
def test_videos_shared_among_worker_processes(models_dir, media_dir, tmp_path, monkeypatch):
    """Two workers write the rows one process writes; a worker whose model cannot load ends its
    own videos with a problem, not the run."""
    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    frames = image_folder(media_dir / "default.wmv", tmp_path / "frames", 15)
    sources = [media_dir / "image_sequence", frames]
    load = functools.partial(torch_clnf.load_model, "main_clnf_general.txt", models_dir, dtype=torch.float64)
    summaries = track_videos_in_processes(sources, load, workers=2, out_dir=tmp_path / "apart", progress=False)
    assert [(s.source, s.frames, s.tracked, s.problems) for s in summaries] == [(sources[0], 30, 30, []),
                                                                                 (sources[1], 15, 15, [])]
    track_videos(sources, load(), tmp_path / "together", streams=2, progress=False)
    for name in ("image_sequence.csv", "frames.csv"):
        apart, together = read_csv(tmp_path / "apart" / name), read_csv(tmp_path / "together" / name)
        assert len(apart) == len(together)
        for a, b in zip(apart, together):
            assert a["success"] == b["success"]
            torch.testing.assert_close(points(a), points(b), atol=CSV_PRECISION, rtol=0)

    broken = functools.partial(failing_worker_model, "main_clnf_general.txt", models_dir)
    summaries = track_videos_in_processes(sources, broken, workers=2, out_dir=tmp_path / "broken", progress=False)
    for summary in summaries:
        assert summary.frames == 0 and "worker process failed" in summary.problems[0]
        assert "no model in a worker" in summary.problems[0]


def test_videos_are_shared_longest_first():
    assert share_videos([100, 300, 50, 200], 2) == [[1, 2], [0, 3]]
    assert share_videos([10, 10], 4) == [[0], [1]]


def test_a_stopped_run_started_again_tracks_only_what_is_not_complete(model, media_dir, tmp_path, monkeypatch):
    """Stopped in the middle of the second of three videos: the first CSV is complete, the second
    a .csv.part; the same run again fits the second (from its start: each frame once) and the
    third only; a source changed since is fitted again; force fits them all."""
    import os
    import threading

    sources = [image_folder(media_dir / "default.wmv", tmp_path / f"v{k}", 6 + 2 * k) for k in range(3)]
    fitted = []
    prepare = model.prepare
    def counted(images):                            # each lockstep's frames, prepared once as a list
        if isinstance(images, list):
            fitted.append(len(images))
        return prepare(images)

    monkeypatch.setattr(model, "prepare", counted)
    stop = threading.Event()
    steps = []

    def progress(frames):
        steps.append(frames)
        if sum(steps) >= 6 + 3:
            stop.set()

    out = tmp_path / "out"
    first = track_videos(sources, model, out, streams=1, progress=progress, stop=stop, segments=1)
    assert [s.complete for s in first] == [True, False, False] and first[1].frames == 3
    assert (out / "v0.csv").exists() and len(read_csv(out / "v1.csv.part")) == 3 and not (out / "v1.csv").exists()
    assert "interrupted after 3 frames" in first[1].problems[0]

    fitted.clear()
    again = track_videos(sources, model, out, streams=1, progress=False, segments=1)
    assert [s.skipped for s in again] == [True, False, False] and sum(fitted) == 8 + 10
    assert [int(r["frame"]) for r in read_csv(out / "v1.csv")] == list(range(1, 9))
    assert not list(out.glob("*.part")) and again[0].line().endswith("done in an earlier run, skipped (ok)")

    fitted.clear()
    (sources[2] / "009.png").unlink()                                   # the third source changed
    os.utime(sources[2])
    again = track_videos(sources, model, out, streams=1, progress=False, segments=1)
    assert [s.skipped for s in again] == [True, True, False] and sum(fitted) == 9
    fitted.clear()
    track_videos(sources, model, out, streams=1, progress=False, segments=1, force=True)
    assert sum(fitted) == 6 + 8 + 9
