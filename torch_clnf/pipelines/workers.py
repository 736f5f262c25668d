"""Many videos on every CPU core: :func:`~torch_clnf.pipelines.track_videos` in several processes.

One process fits a batch of faces on one core about as fast as PyTorch's threads would on
several (a fit is mostly small operations, which threads do not speed up), so a folder of videos
is shared among worker processes, each with its own model and its own lockstep batch of streams,
one per free core, and no more torch threads in all than the cores other processes leave free
(:mod:`torch_clnf.threads`). The videos are dealt longest first to the worker with the fewest
frames so far; each worker writes its videos' CSVs row by row, as in one process.
"""
from __future__ import annotations

import multiprocessing
import queue
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from ..landmark_model import LandmarkModel
from ..threads import free_cores, limit_threads
from .frames import FrameReader
from .tracker import TrackingConfig
from .outputs import output_stems
from .videos import Event, VideoSummary, output_ends, progress_bar, track_videos

_frames_done: "multiprocessing.Queue[int] | None" = None     # a worker's channel for progress counts
_stop: Event | None = None                                   # a worker's stop signal, set by the parent


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


def auto_workers(sources: Sequence[str | Path], frames_per_worker: int = 500) -> int:
    """Workers worth starting for these videos on this CPU: one per free core (the cores other
    processes leave free), at most one per video and one per ``frames_per_worker`` frames
    (starting a worker costs a few seconds; each holds its own model, about 0.4 GB with its
    working memory)."""
    frames = sum(FrameReader.count(Path(s)) for s in sources)
    return max(1, min(free_cores(), len(sources), frames // frames_per_worker))


def track_videos_in_processes(sources: Sequence[str | Path], load: Callable[[], LandmarkModel], workers: int,
                              out_dir: str | Path | None = None, streams: int = 8,
                              tracking: TrackingConfig | None = None, draw: bool = False, progress: bool = True,
                              threads: int | None = None, stop: Event | None = None) -> list[VideoSummary]:
    """:func:`track_videos` with the videos shared among ``workers`` processes.

    The workers are started with ``spawn``: a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard.

    Args:
        sources: video files or image folders.
        load: builds each worker's model; it must pickle, e.g.
            ``functools.partial(torch_clnf.load_model, "main_clnf_general.txt", config=config)``.
        workers: processes (at most one per video).
        out_dir, streams, tracking, draw, stop: as for :func:`track_videos` (``stop`` is passed on
            to the workers, which ignore Ctrl-C themselves: the parent decides).
        progress: one tqdm bar on stderr for all workers (frames, frames/s).
        threads: the most torch threads per worker (default: the free cores shared among the
            workers; each call still takes one thread for a few faces, see :mod:`torch_clnf.threads`).
    Returns:
        one :class:`VideoSummary` per source, in the order given. A worker that fails ends
        only its own videos: their summaries say so, and the CSV rows it wrote stay.
    """
    pending = [Path(s) for s in sources]
    outputs = output_stems(pending, out_dir, output_ends(draw))
    counts = [FrameReader.count(s) for s in pending]
    shares = share_videos(counts, min(workers, len(pending)))
    threads = threads or max(1, free_cores() // max(1, len(shares)))
    context = multiprocessing.get_context("spawn")          # fork would copy torch's thread pools
    frames_done, workers_stop = context.Queue(), context.Event()
    bar = progress_bar(progress, sum(counts))
    summaries: dict[int, VideoSummary] = {}
    try:
        with ProcessPoolExecutor(len(shares), mp_context=context, initializer=_start_worker,
                                 initargs=(frames_done if progress else None, threads, workers_stop)) as pool:
            jobs: dict[Future, list[int]] = {
                pool.submit(_track_share, load, [pending[k] for k in share], [outputs[k] for k in share], streams,
                            tracking, draw): share
                for share in shares}
            try:
                while any(not job.done() for job in jobs):
                    _drain(frames_done, bar, timeout=0.2)
                    if stop is not None and stop.is_set():
                        workers_stop.set()
            except KeyboardInterrupt:                         # at once: the rows written so far stay
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                raise
            _drain(frames_done, bar, timeout=0)
            for job, share in jobs.items():
                try:
                    summaries.update(zip(share, job.result()))
                except Exception as err:                      # this worker's videos only
                    for k in share:
                        summaries[k] = VideoSummary(pending[k], problems=[f"worker process failed: {err}"])
    finally:
        if bar is not None:
            bar.close()
    return [summaries[k] for k in range(len(pending))]


def _drain(frames_done: "multiprocessing.Queue[int]", bar, timeout: float) -> None:
    """Move the workers' frame counts to the bar; wait up to ``timeout`` s for the first."""
    try:
        count = frames_done.get(timeout=timeout) if timeout > 0 else frames_done.get_nowait()
        while True:
            if bar is not None:
                bar.update(count)
            count = frames_done.get_nowait()
    except queue.Empty:
        pass


def _start_worker(frames_done: "multiprocessing.Queue[int] | None", threads: int, stop: Event) -> None:
    global _frames_done, _stop
    _frames_done, _stop = frames_done, stop
    limit_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)             # Ctrl-C reaches the parent, which sets ``stop``


def _track_share(load: Callable[[], LandmarkModel], sources: list[Path], outputs: list[Path], streams: int,
                 tracking: TrackingConfig | None, draw: bool) -> list[VideoSummary]:
    report = _frames_done.put if _frames_done is not None else False
    try:
        return track_videos(sources, load(), None, streams, tracking, draw, progress=report, stop=_stop,
                            outputs=outputs)
    except Exception as err:        # as an error every process can unpickle, its message kept
        raise RuntimeError(f"{type(err).__name__}: {err}") from None
