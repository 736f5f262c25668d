"""track_videos_on_ray: a corpus on Ray's local cluster (loopback, 2 CPUs): the same CSVs as the
worker processes, actors that die, runs that resume, a video that always fails.

Runs that are compared fit in float64: their lockstep batches differ (which videos share a step),
which in float32 moves a tracked video chaotically by up to a third of a pixel on a frame
(tests/tolerances.py); in float64 the CSVs agree up to their 0.001-pixel rounding."""
import csv
import functools
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import torch_clnf
from crashes import hooked_model
from torch_clnf.cli import main
from torch_clnf.pipelines import track_videos_in_processes
from torch_clnf.pipelines.manifest import MANIFEST
from torch_clnf.pipelines.ray_runs import track_videos_on_ray

TESTS = Path(__file__).resolve().parent.parent
CUTS = [(0, 24), (24, 52), (52, 84), (84, 120)]          # four clips of default.wmv: 24, 28, 32 and 36 frames
CSV_ROUNDING = float(np.hypot(0.001, 0.001))               # landmarks are written to 0.001 px


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ray_cluster(cache):
    """One local Ray cluster for the module: 2 CPUs, loopback only; its workers find tests/ (the
    hooks) and this module's weights cache (they take the environment of the process that starts it)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is not installed (it is in the dev extra)")
        pytest.skip("ray is not installed")
    given = {name: os.environ.get(name) for name in ("PYTHONPATH", "TORCH_CLNF_CACHE")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)] + [given["PYTHONPATH"] or ""]).rstrip(
        os.pathsep)
    os.environ["TORCH_CLNF_CACHE"] = str(cache)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _node_ip_address="127.0.0.1")
    finally:
        for name, value in given.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    yield ray
    ray.shutdown()


def cut(video, path, first, last):
    """Frames [first, last) of ``video`` as an MJPG file at ``path``."""
    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, first)
    writer = None
    for _ in range(first, last):
        ok, image = capture.read()
        assert ok
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, image.shape[1::-1])
        writer.write(image)
    writer.release()
    capture.release()
    return path


@pytest.fixture(scope="module")
def clips(media_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return [cut(media_dir / "default.wmv", folder / f"clip{k}.avi", *span) for k, span in enumerate(CUTS)]


def loader(models_dir, cache, **hooks):
    return functools.partial(hooked_model, "main_clnf_general.txt", str(models_dir), cache=str(cache), **hooks)


@pytest.fixture(scope="module")
def ray_run(ray_cluster, clips, models_dir, cache, tmp_path_factory):
    """The four clips tracked on Ray: (summaries, output folder)."""
    out = tmp_path_factory.mktemp("ray")
    load = functools.partial(torch_clnf.load_model, "main_clnf_general.txt", models_dir, cache=cache,
                             dtype=torch.float64)
    return track_videos_on_ray(clips, load, out, streams=2, progress=False), out


def table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def landmarks(rows):
    return np.array([[[float(r[f"x_{i}"]), float(r[f"y_{i}"])] for i in range(68)] for r in rows])


def fits(log: Path) -> int:
    """Frames fitted, as the hooked models logged them."""
    return sum(int(line) for line in log.read_text().split()) if log.exists() else 0


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def test_ray_writes_the_csvs_of_the_worker_processes(ray_run, clips, models_dir, cache, tmp_path):
    summaries, out = ray_run
    assert [(s.source, s.frames, s.problems, s.complete, s.tries) for s in summaries] == [
        (clip, last - first, [], True, 1) for clip, (first, last) in zip(clips, CUTS)]
    load = functools.partial(torch_clnf.load_model, "main_clnf_general.txt", models_dir, cache=cache,
                             dtype=torch.float64)
    track_videos_in_processes(clips, load, 2, tmp_path, streams=2, progress=False, threads=1)
    for clip in clips:
        ray_rows, worker_rows = table(out / f"{clip.stem}.csv"), table(tmp_path / f"{clip.stem}.csv")
        assert [r["frame"] for r in ray_rows] == [r["frame"] for r in worker_rows]
        assert [r["success"] for r in ray_rows] == [r["success"] for r in worker_rows]
        d = np.linalg.norm(landmarks(ray_rows) - landmarks(worker_rows), axis=-1)      # float64, another batch order
        assert d.max() <= CSV_ROUNDING + 1e-9
    assert {r["csv"] for r in records(out)} == {str(out / f"{clip.stem}.csv") for clip in clips}
    assert all(r["complete"] and r["tracked"] > 0 for r in records(out))
    assert not list(out.glob("*.part"))


def test_a_video_whose_actor_dies_is_tracked_again_each_frame_once(ray_run, clips, models_dir, cache, tmp_path):
    """The first actor dies at its 12th lockstep: the videos it held are dealt again, alone, and
    their CSVs hold each frame once (the partial CSV written anew), as the run without a death."""
    _, reference = ray_run
    load = loader(models_dir, cache, die_after=12, marker=str(tmp_path / "died"), dtype=torch.float64)
    summaries = track_videos_on_ray(clips, load, tmp_path / "out", streams=2, progress=False)
    assert (tmp_path / "died").exists()
    assert sum(s.tries == 2 for s in summaries) >= 1 and all(s.tries <= 2 for s in summaries)
    for summary, clip, (first, last) in zip(summaries, clips, CUTS):
        assert summary.problems == [] and summary.complete and summary.frames == last - first
        rows = table(tmp_path / "out" / f"{clip.stem}.csv")
        assert [int(r["frame"]) for r in rows] == list(range(1, last - first + 1))        # each frame once
        expected = table(reference / f"{clip.stem}.csv")
        d = np.linalg.norm(landmarks(rows) - landmarks(expected), axis=-1)
        assert d.max() <= CSV_ROUNDING + 1e-9
    assert "tracked again after its Ray actor died (2 tries)" in next(s for s in summaries if s.tries == 2).line()


class AfterVideos:
    """A stop event, set once ``count`` videos are recorded complete in ``out``'s manifest."""

    def __init__(self, out: Path, count: int) -> None:
        self.out, self.count = out, count

    def is_set(self) -> bool:
        return (self.out / MANIFEST).exists() and sum(r["complete"] for r in records(self.out)) >= self.count


def test_an_interrupted_run_started_again_fits_only_the_videos_not_complete(ray_cluster, clips, models_dir, cache,
                                                                           tmp_path):
    """The stop is set once two videos are complete; it reaches the actors a few tenths of a second
    later (the driver's poll, then each actor's next report), in which an actor may end a third
    video: a pause of 0.1 s a frame makes each clip last 2.4 s or more, so that one at least is
    never complete, whatever the machine's load."""
    out, log = tmp_path / "out", tmp_path / "fits"
    load = loader(models_dir, cache, count=str(log))
    first = track_videos_on_ray(clips, loader(models_dir, cache, count=str(log), pause=0.1), out, streams=1,
                                progress=False, stop=AfterVideos(out, 2))
    complete = [clip for clip, s in zip(clips, first) if s.complete]
    assert 2 <= len(complete) < len(clips) and all((out / f"{c.stem}.csv").exists() for c in complete)
    assert all(not (out / f"{c.stem}.csv").exists() for c in clips if c not in complete)
    log.unlink()

    again = track_videos_on_ray(clips, load, out, streams=1, progress=False)
    assert [s.skipped for s in again] == [clip in complete for clip in clips]
    assert fits(log) == sum(last - first for clip, (first, last) in zip(clips, CUTS) if clip not in complete)
    for clip, (first, last) in zip(clips, CUTS):
        assert [int(r["frame"]) for r in table(out / f"{clip.stem}.csv")] == list(range(1, last - first + 1))
    assert not list(out.glob("*.part"))
    assert "done in an earlier run, skipped" in again[clips.index(complete[0])].line()


def test_a_source_changed_since_the_first_run_is_tracked_again(ray_cluster, clips, models_dir, cache, tmp_path):
    sources = [shutil.copy(clip, tmp_path / clip.name) for clip in clips[:2]]
    out, log = tmp_path / "out", tmp_path / "fits"
    load = loader(models_dir, cache, count=str(log))
    track_videos_on_ray(sources, load, out, streams=2, progress=False)
    log.unlink()
    cut(clips[0].parent / clips[3].name, Path(sources[1]), 0, 20)          # another video under the same name
    summaries = track_videos_on_ray(sources, load, out, streams=2, progress=False)
    assert [s.skipped for s in summaries] == [True, False]
    assert fits(log) == 20 and len(table(out / f"{Path(sources[1]).stem}.csv")) == 20
    log.unlink()
    summaries = track_videos_on_ray(sources, load, out, streams=2, progress=False, force=True)
    assert not any(s.skipped for s in summaries) and fits(log) == 24 + 20


def test_a_video_that_always_kills_its_actor_is_reported_and_the_others_complete(ray_cluster, clips, models_dir,
                                                                                 cache, tmp_path):
    noise = tmp_path / "noise.avi"
    writer = cv2.VideoWriter(str(noise), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for k in range(10):
        writer.write(np.random.default_rng(k).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    sources = [clips[0], noise, clips[1]]
    load = loader(models_dir, cache, poison=(64, 96))
    summaries = track_videos_on_ray(sources, load, tmp_path / "out", streams=2, progress=False, tries=2)
    good, bad, other = summaries
    assert not bad.complete and bad.tries == 2 and "its Ray actor died each of the 2 times" in bad.problems[0]
    for summary, (first, last) in ((good, CUTS[0]), (other, CUTS[1])):
        assert summary.complete and summary.problems == [] and summary.frames == last - first
        assert [int(r["frame"]) for r in table(summary.csv)] == list(range(1, last - first + 1))
    assert not (tmp_path / "out/noise.csv").exists()
    bad_record = [r for r in records(tmp_path / "out") if r["csv"].endswith("noise.csv")][-1]
    assert not bad_record["complete"] and "died" in bad_record["problems"][0]


def test_video_command_on_ray_resumes_and_says_what_to_install_without_it(ray_cluster, clips, models_dir, cache,
                                                                          tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_CLNF_CACHE", str(cache))
    command = ["video", str(clips[0]), "--models", str(models_dir), "--out", str(tmp_path / "out"), "--quiet", "--ray"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "clip0.avi: 24 frames" in out and f"landmarks written to {tmp_path / 'out/clip0.csv'}" in out
    assert main(command) == 0 and "done in an earlier run, skipped" in capsys.readouterr().out
    assert main(command + ["--segments", "4"]) == 2
    assert "with --ray each video is tracked whole" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "ray", None)          # as if Ray were not installed
    assert main(command) == 2
    assert "pip install 'torch_clnf[ray]'" in capsys.readouterr().err
