"""Many videos on every CPU core: :func:`~torch_clnf.pipelines.track_videos` in several processes.

One process fits a batch of faces on one core about as fast as PyTorch's threads would on
several (a fit is mostly small operations, which threads do not speed up), so a folder of videos
is shared among worker processes, each with its own model and its own lockstep batch of streams,
one per free core, and no more torch threads in all than the cores other processes leave free
(:mod:`torch_clnf.threads`). The jobs — whole videos, and the segments of long ones
(:mod:`.segments`) — are dealt longest first to the worker with the fewest frames so far. Each
worker writes its whole videos' CSVs row by row, as in one process, and its segments' rows files;
the parent process assembles each segmented video's CSV from those as the segments finish
(:mod:`.assembly`). The workers are processes of their own: one that dies ends only its own jobs.
Each worker reports every job as it ends, and the parent records each video in the run's
manifest (:mod:`.manifest`), so that the same command again does only what is left.
"""
from __future__ import annotations

import functools
import inspect
import multiprocessing
import queue
import signal
from pathlib import Path
from typing import Any, Callable, Sequence

from ..fitting import FitConfig
from ..landmark_model import LandmarkModel, load_model
from ..threads import free_cores, limit_threads
from ..weights import load_weights, resolve_spec
from .frames import FrameReader
from .manifest import run_options
from .tracker import TrackingConfig
from .assembly import VideoAssembly
from .outputs import output_stems
from .segments import WARMUP, warmups_per_segment
from .videos import (Event, Job, VideoSummary, output_ends, plan_jobs, progress_bar, resume,
                     run_jobs)



def share_videos(frame_counts: Sequence[int], workers: int) -> list[list[int]]:
    """Indices of the videos for each worker: longest first to the least loaded (in frames).

    Returns at most ``workers`` non-empty lists, each in the videos' original order.
    """
    loads = [0] * max(1, workers)
    shares: list[list[int]] = [[] for _ in loads]
    for k in sorted(range(len(frame_counts)), key=lambda k: -frame_counts[k]):
        least = min(range(len(loads)), key=loads.__getitem__)
        shares[least].append(k)
        loads[least] += max(1, frame_counts[k])
    return [sorted(share) for share in shares if share]


def auto_workers(sources: Sequence[str | Path], frames_per_worker: int = 500, segments: int | None = None) -> int:
    """Workers worth starting for these videos on this CPU: one per free core (the cores other
    processes leave free), at most one per ``frames_per_worker`` frames (starting a worker costs a
    few seconds; each holds its own model, about 0.4 GB with its working memory), and at most one
    per video where videos are not cut into segments (``segments`` 1)."""
    frames = sum(FrameReader.count(Path(s)) for s in sources)
    most = len(sources) if segments == 1 else frames
    return max(1, min(free_cores(), most, frames // frames_per_worker))


def track_videos_in_processes(sources: Sequence[str | Path], load: Callable[[], LandmarkModel], workers: int,
                              out_dir: str | Path | None = None, streams: int = 8,
                              tracking: TrackingConfig | None = None, draw: bool = False, progress: bool = True,
                              threads: int | None = None, stop: Event | None = None, segments: int | None = None,
                              warmup: int = WARMUP, force: bool = False) -> list[VideoSummary]:
    """:func:`track_videos` with the videos (and the segments of long ones) shared among ``workers``
    processes.

    The workers are started with ``spawn``: a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard.

    Args:
        sources: video files or image folders.
        load: builds each worker's model; it must pickle, e.g.
            ``functools.partial(torch_clnf.load_model, "main_clnf_general.txt", config=config)``.
        workers: processes.
        out_dir, streams, tracking, draw, stop, segments, warmup, force: as for :func:`track_videos`
            (``stop`` is passed on to the workers, which ignore Ctrl-C themselves: the parent
            decides; segments fill every worker's streams; the videos complete in an earlier run
            are skipped unless ``force``).
        progress: one tqdm bar on stderr for all workers (frames, frames/s).
        threads: the most torch threads per worker (default: the free cores shared among the
            workers; each call still takes one thread for a few faces, see :mod:`torch_clnf.threads`).
    Returns:
        one :class:`VideoSummary` per source, in the order given. A worker that fails ends
        only its own jobs: their summaries say so, and the CSV rows it wrote stay; the frames of a
        segment it did not finish get success-0 rows in its video's CSV.
    """
    given = [Path(s) for s in sources]
    all_outputs = output_stems(given, out_dir, output_ends(draw))
    points, modes, model = model_facts(load)
    run = resume(given, all_outputs, out_dir, run_options(*model, tracking or TrackingConfig(), draw), force)
    pending, outputs = [given[k] for k in run.todo], [all_outputs[k] for k in run.todo]
    jobs, segmented = plan_jobs(pending, outputs, streams * max(1, workers), segments, warmup,
                                warmups_per_segment(model[1].compile))             # (workers: CPU processes)
    shares = [[jobs[k] for k in share] for share in share_videos([job.frames for job in jobs], workers)]
    threads = threads or max(1, free_cores() // max(1, len(shares)))
    model_shape = (points, modes)
    context = multiprocessing.get_context("spawn")          # fork would copy torch's thread pools
    released = context.Array("b", len(jobs), lock=False)   # per job: handed over from, may stop
    first_job = {job.segment.video: job.number for job in reversed(jobs)}

    def release(video: int) -> Callable[[int], None]:
        return lambda number: released.__setitem__(first_job[video] + number, 1)

    assemblies = {video: VideoAssembly(parts, outputs[video], fps, *model_shape, draw, frames, release(video))
                  for video, (parts, fps, frames) in segmented.items()}
    messages, workers_stop = context.Queue(), context.Event()
    bar = progress_bar(progress, sum(job.frames for job in jobs))
    summaries: dict[int, VideoSummary] = {}
    results: dict[int, str | None] = {}                     # worker → None when it ended well, or why it failed

    def receive(message) -> None:
        if isinstance(message, int):
            if bar is not None:
                bar.update(message)
        elif message[0] == "job":                           # a job ended: its video recorded, or its rows assembled
            _, number, summary = message
            job = jobs[number]
            if job.segmented:
                cut_short = not summary.complete and not workers_stop.is_set()
                assemblies[job.segment.video].finished(job.segment.number, summary.problems, fitted=summary.frames,
                                                       failure="its tracking was cut short" if cut_short else None)
            else:
                summaries[job.segment.video] = summary
                summary.record_in(run.manifest, outputs[job.segment.video])
        else:                                               # ("result", worker, None or an error message)
            results[message[1]] = message[2]

    processes = [context.Process(target=_worker, args=(w, load, share, streams, tracking, draw, messages, threads,
                                                       workers_stop, released), name=f"torch-clnf worker {w}",
                                 daemon=True) for w, share in enumerate(shares)]
    try:
        for process in processes:
            process.start()
        try:
            while len(results) < len(processes):
                _drain(messages, receive, timeout=0.2)
                for assembly in assemblies.values():
                    assembly.pump()
                if stop is not None and stop.is_set():
                    workers_stop.set()
                for w, process in enumerate(processes):      # a worker that died without a word
                    if w not in results and process.exitcode is not None:
                        _drain(messages, receive, timeout=0.5)
                        results.setdefault(w, f"it ended with exit code {process.exitcode}")
        except KeyboardInterrupt:                             # at once: the rows written so far stay
            for process in processes:
                process.terminate()
            raise
        for w, share in enumerate(shares):
            found = results[w]
            if found is None:
                continue
            for job in share:
                video = job.segment.video
                if job.segmented:                             # the frames it did not track: success 0
                    if not assemblies[video].parts[job.segment.number].done:
                        assemblies[video].finished(job.segment.number, failure=f"worker process failed: {found}")
                elif video not in summaries or not summaries[video].complete:
                    summary = summaries.setdefault(video, VideoSummary(job.segment.source))
                    summary.problems.append(f"worker process failed: {found}")
                    summary.record_in(run.manifest, outputs[video])
    finally:
        for process in processes:
            process.join(timeout=5)
        run.close_assemblies(assemblies, summaries, pending, outputs, stop is not None and stop.is_set())
        if bar is not None:
            bar.close()
    return run.every_summary(summaries, pending)


def model_facts(load: Callable[..., LandmarkModel]) -> tuple[int, int, tuple[str, FitConfig, Any]]:
    """(landmarks, modes) of the model ``load`` builds, for the CSV's columns, and its (name, fit
    settings, dtype), for the run's manifest: from its converted weights where ``load`` is a
    ``functools.partial`` of :func:`~torch_clnf.load_model` (no model is built in this process),
    else from the model."""
    if isinstance(load, functools.partial) and load.func is load_model:
        given = inspect.signature(load_model).bind_partial(*load.args, **load.keywords).arguments
        spec, models = given.get("spec", "main_clnf_general.txt"), given.get("models")
        weights = load_weights(resolve_spec(spec, models), models, given.get("cache"))
        config = given.get("config") or FitConfig()
        config = config.for_ceclm() if weights.cen else config
        dtype = given.get("dtype", inspect.signature(load_model).parameters["dtype"].default)
        return weights.pdm.num_points, weights.pdm.num_modes, (weights.name, config, dtype)
    model = load()
    pdm = model.fitter.pdm
    return pdm.num_points, pdm.num_modes, (model.name, model.config, model.dtype)


def _drain(messages: "multiprocessing.Queue", receive: Callable[[object], None], timeout: float) -> None:
    """Pass the workers' messages to ``receive``; wait up to ``timeout`` s for the first."""
    try:
        message = messages.get(timeout=timeout) if timeout > 0 else messages.get_nowait()
        while True:
            receive(message)
            message = messages.get_nowait()
    except queue.Empty:
        pass


def _worker(number: int, load: Callable[[], LandmarkModel], jobs: list[Job], streams: int,
            tracking: TrackingConfig | None, draw: bool, messages: "multiprocessing.Queue", threads: int,
            stop: Event, released) -> None:
    """A worker process: its jobs in lockstep. Whole videos write their CSVs, segments their rows
    files; ``("job", job number, summary)`` as each job ends (the parent records the video, or
    assembles the segment's rows); at the end, ``("result", number, None)``, or the error as text
    (every process can unpickle it)."""
    limit_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)             # Ctrl-C reaches the parent, which sets ``stop``

    def finished(job: Job, summary: VideoSummary) -> None:
        messages.put(("job", job.number, summary))

    try:
        run_jobs(jobs, load(), streams, tracking, draw, messages.put, stop, finished, lambda k: bool(released[k]))
    except Exception as err:
        messages.put(("result", number, f"{type(err).__name__}: {err}"))
        return
    messages.put(("result", number, None))
