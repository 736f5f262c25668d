"""A corpus of videos on a Ray cluster: :func:`track_videos_on_ray`.

Ray (``pip install 'torch_clnf[ray]'``) starts the actors — one per GPU where the cluster has
GPUs, else one per CPU core, each on one torch thread — and each actor loads its model once and
tracks videos in lockstep (:func:`.videos.run_jobs`), as a worker process does on one machine.
The videos are dealt from one queue, longest first, by a small dealer actor: an actor takes a
video whenever one of its streams is free, so that no actor idles while another has a backlog.
Each video is tracked whole by one actor (a corpus fills a cluster's streams by itself; a video
cut into segments would need its rows assembled across machines).

An actor that dies (its process killed, its node lost) loses the videos it was tracking: each is
dealt again, from its first frame and alone on its actor, so that a video that kills its actor
takes no other video down with it the next time; after ``tries`` deaths it is reported failed and
the others go on. The CSVs are written by the actors under ``out_dir``, which every node must see
(a shared filesystem); the driver — the process that calls this — keeps the run's manifest
(:mod:`.manifest`) and one progress bar over all frames, fed by the actors' reports.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from ..landmark_model import LandmarkModel
from ..threads import limit_threads
from .manifest import run_options
from .outputs import output_stems
from .tracker import TrackingConfig
from .videos import Event, Job, VideoSummary, output_ends, plan_jobs, progress_bar, resume, run_jobs
from .workers import model_facts

TRIES = 3                  # times a video is started before it is reported failed (its actor died each time)
REPORT_SECONDS = 0.25      # how often an actor reports its frames (and learns whether to stop)
INSTALL = "Ray is not installed: pip install 'torch_clnf[ray]' (or pip install ray)"


def import_ray():
    """The ``ray`` module, or an ImportError that says what to install."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(INSTALL) from err
    return ray


class Dealer:
    """The run's queue of videos, on the driver's node (a Ray actor of no CPU): it deals them,
    counts the frames the actors report, and collects the summaries of the videos that end.

    Args:
        jobs: the videos to track (whole, :class:`~.videos.Job`), in any order: dealt longest first.
        actors: the actors of the run; while videos are fewer than their streams, none holds more
            than its share (an actor that is ready first does not take them all).
    """

    def __init__(self, jobs: list[Job], actors: int) -> None:
        self.jobs = {job.number: job for job in jobs}
        self.actors = max(1, actors)
        self.queue = deque(sorted(self.jobs, key=lambda n: -self.jobs[n].frames))
        self.suspects: deque[int] = deque()      # videos whose actor died: dealt alone, first
        self.suspected: set[int] = set()
        self.holding: dict[str, set[int]] = {}   # actor → the videos it took and has not ended
        self.tries = {number: 0 for number in self.jobs}
        self.news: list[tuple[int, VideoSummary]] = []
        self.frames = 0
        self.stopping = False

    def take(self, actor: str) -> Job | None:
        """The next video for ``actor`` (None: none for it now). A video whose actor died goes to
        an actor that holds nothing else, and that actor takes nothing more while it holds it."""
        held = self.holding.setdefault(actor, set())
        if self.stopping or any(number in self.suspected for number in held):
            return None
        share = -(-(len(self.queue) + len(self.suspects) + sum(map(len, self.holding.values()))) // self.actors)
        if held and len(held) >= share:
            return None
        if self.suspects and not held:
            number = self.suspects.popleft()
        elif self.queue:
            number = self.queue.popleft()
        else:
            return None
        held.add(number)
        self.tries[number] += 1
        return self.jobs[number]

    def ended(self, actor: str, number: int, summary: VideoSummary) -> None:
        """``actor`` has ended video ``number`` (tracked to its end, or stopped)."""
        self.holding.get(actor, set()).discard(number)
        summary.tries = self.tries[number]
        self.news.append((number, summary))

    def report(self, frames: int) -> bool:
        """An actor has tracked ``frames`` more frames; whether the run is stopping."""
        self.frames += frames
        return self.stopping

    def collect(self) -> tuple[int, list[tuple[int, VideoSummary]], int]:
        """(frames tracked so far, the videos ended since the last call, the videos still to deal)."""
        news, self.news = self.news, []
        return self.frames, news, len(self.queue) + len(self.suspects)

    def lost(self, actor: str, tries: int) -> tuple[list[int], list[int]]:
        """``actor`` died: the videos it held are dealt again (first, each alone) where they have
        been started fewer than ``tries`` times; returns (dealt again, given up)."""
        again, failed = [], []
        for number in sorted(self.holding.pop(actor, set())):
            if self.tries[number] < tries:
                self.suspects.append(number)
                self.suspected.add(number)
                again.append(number)
            else:
                failed.append(number)
        return again, failed

    def stop(self) -> None:
        """Deal no more; the actors end their videos after the frames under way."""
        self.stopping = True


class VideoActor:
    """One Ray actor: a model, loaded at its first call, and the videos it takes from the dealer,
    tracked in lockstep.

    Args:
        name: the actor's name in the dealer's books.
        load: builds the model; called as ``load(device="cuda")`` on an actor given a GPU.
        gpu: whether Ray gave this actor a GPU.
        streams, tracking, draw: as for :func:`~.videos.track_videos`.
        out_dir: the output folder (checked writable from this actor's node), or None.
    """

    def __init__(self, name: str, load: Callable[..., LandmarkModel], gpu: bool, streams: int,
                 tracking: TrackingConfig | None, draw: bool, out_dir: Path | None) -> None:
        self.name, self.load, self.gpu, self.streams = name, load, gpu, streams
        self.tracking, self.draw, self.out_dir = tracking, draw, out_dir
        self.model: LandmarkModel | None = None
        try:
            import signal
            signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C reaches the driver, which stops the run
        except ValueError:
            pass

    def track(self, dealer) -> tuple[str, str] | None:
        """Track videos from ``dealer`` until it has none for this actor; None, or (kind, message)
        where the actor cannot work: kind ``"setup"`` (its model or the output folder: no actor
        can) or ``"crash"`` (an error while tracking: its videos are dealt again)."""
        import ray

        try:
            self._check_output()
            if self.model is None:
                if not self.gpu:
                    limit_threads(1)
                    import torch
                    torch.set_num_threads(1)
                self.model = self.load(device="cuda") if self.gpu else self.load()
        except Exception as err:
            return "setup", f"{type(err).__name__}: {err}"
        deal = _Deal(self.name, dealer)
        reports = _Reports(dealer)

        def ended(job: Job, summary: VideoSummary) -> None:
            if summary.complete or reports.stopping:              # else cut short by an error: dealt again
                dealer.ended.remote(self.name, job.number, summary)

        try:
            run_jobs(deal, self.model, self.streams, self.tracking, self.draw, reports.add, reports, ended,
                     lambda number: False)
        except Exception as err:
            return "crash", f"{type(err).__name__}: {err}"
        finally:
            reports.send()
            ray.get(dealer.report.remote(0))                       # every call above has reached the dealer
        return None

    def _check_output(self) -> None:
        """An error naming this node where the output folder cannot be written from it."""
        if self.out_dir is None:
            return
        probe = self.out_dir / f".torch_clnf_probe_{uuid.uuid4().hex}"
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise OSError(f"the output folder {self.out_dir} cannot be written from node {socket.gethostname()} "
                          f"({err.strerror or err}): --out must be a folder every node of the cluster sees, on a "
                          "shared filesystem") from None


class _Deal:
    """An actor's jobs: taken from the dealer as its streams free up (runs dry when it has none;
    after a refusal it asks again only :data:`REPORT_SECONDS` later, not at every step)."""

    def __init__(self, name: str, dealer) -> None:
        self.name, self.dealer, self.refused = name, dealer, -REPORT_SECONDS

    def __iter__(self) -> "_Deal":
        return self

    def __next__(self) -> Job:
        import ray

        if time.monotonic() - self.refused < REPORT_SECONDS:
            raise StopIteration
        job = ray.get(self.dealer.take.remote(self.name))
        if job is None:
            self.refused = time.monotonic()
            raise StopIteration
        return job


class _Reports:
    """An actor's frame counts, sent to the dealer every :data:`REPORT_SECONDS`; its answer says
    whether the run is stopping (``is_set``, as a stop event)."""

    def __init__(self, dealer) -> None:
        self.dealer, self.frames, self.stopping, self.sent = dealer, 0, False, time.monotonic()

    def add(self, frames: int) -> None:
        self.frames += frames
        if time.monotonic() - self.sent >= REPORT_SECONDS:
            self.send()

    def send(self) -> None:
        import ray

        self.stopping = ray.get(self.dealer.report.remote(self.frames))
        self.frames, self.sent = 0, time.monotonic()

    def is_set(self) -> bool:
        return self.stopping


def cluster_actors(ray, actors: int | None = None) -> tuple[int, bool]:
    """(actors, whether each gets a GPU): one per GPU of the cluster, else one per CPU core
    (``actors``: that many, on GPUs where the cluster has any)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if actors is not None:
        return max(1, actors), gpus > 0
    return (gpus, True) if gpus else (max(1, cpus), False)


def track_videos_on_ray(sources: Sequence[str | Path], load: Callable[..., LandmarkModel],
                        out_dir: str | Path | None = None, address: str | None = None, streams: int = 8,
                        tracking: TrackingConfig | None = None, draw: bool = False, progress: bool = True,
                        stop: Event | None = None, force: bool = False, actors: int | None = None,
                        tries: int = TRIES) -> list[VideoSummary]:
    """:func:`~.videos.track_videos` on a Ray cluster: the videos dealt to Ray actors.

    Args:
        sources: video files or image folders, at paths every node sees (a shared filesystem).
        load: builds each actor's model, on a CPU (``load()``) or on the actor's GPU
            (``load(device="cuda")``); it must pickle, e.g.
            ``functools.partial(torch_clnf.load_model, "main_clnf_general.txt", "/shared/openface")``
            (the model files at a path every node sees, or at the same path on each).
        out_dir: where the CSVs go (the sources' relative paths mirrored as by
            :func:`~.outputs.output_stems`): a folder every node sees; default beside each video.
        address: the cluster: ``"auto"`` (the one running on this machine, ``ray start``), an
            address (``"10.0.0.1:6379"``, ``"ray://…"``), or None: a local one for this run (or
            the one this process is already connected to).
        streams: videos each actor tracks in lockstep.
        tracking, draw, stop, force: as for :func:`~.videos.track_videos` (``stop`` ends the run
            after the frames under way on every actor).
        progress: one tqdm bar on stderr over the frames of every video to track.
        actors: how many (default: one per GPU of the cluster, else one per CPU core).
        tries: times a video is started before it is reported failed (its actor died each time).
    Returns:
        one :class:`~.videos.VideoSummary` per source, in the order given.
    Raises:
        ImportError: Ray is not installed (the message says what to install).
        ValueError: before any work, where outputs would overwrite each other or a source.
    """
    ray = import_ray()
    given = [Path(s).absolute() for s in sources]
    all_outputs = [o.absolute() for o in output_stems(given, out_dir, output_ends(draw))]
    _, _, model = model_facts(load)
    run = resume(given, all_outputs, out_dir, run_options(*model, tracking or TrackingConfig(), draw), force)
    pending, outputs = [given[k] for k in run.todo], [all_outputs[k] for k in run.todo]
    jobs, _ = plan_jobs(pending, outputs, 1, segments=1)
    summaries: dict[int, VideoSummary] = {}
    if not jobs:
        return run.summaries([])
    connected_here = not ray.is_initialized()
    if connected_here:
        local = {"num_cpus": actors} if address is None and actors else {}     # a local cluster of that many cores
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **local)
    bar = progress_bar(progress, sum(job.frames for job in jobs))
    try:
        driver = _Driver(ray, jobs, load, streams, tracking, draw, None if out_dir is None else Path(out_dir).absolute(),
                         actors, tries)

        def ended(number: int, summary: VideoSummary) -> None:
            job = jobs[number]
            summary.source = pending[job.segment.video]
            summaries[job.segment.video] = summary
            summary.record_in(run.manifest, outputs[job.segment.video])

        driver.run(ended, bar, stop)
    finally:
        if bar is not None:
            bar.close()
        if connected_here:
            ray.shutdown()
    tracked = [summaries.get(k, VideoSummary(pending[k], problems=["interrupted before it started"]))
               for k in range(len(pending))]
    for summary, k in zip(tracked, run.todo):
        summary.source = Path(sources[k])
    return run.summaries(tracked)


class _Driver:
    """The driver's side of a Ray run: the actors, their calls, and what to do when one dies."""

    def __init__(self, ray, jobs: list[Job], load: Callable[..., LandmarkModel], streams: int,
                 tracking: TrackingConfig | None, draw: bool, out_dir: Path | None, actors: int | None,
                 tries: int) -> None:
        self.ray, self.jobs, self.tries = ray, jobs, tries
        count, self.gpu = cluster_actors(ray, actors)
        self.count = min(count, len(jobs))
        self.dealer = ray.remote(num_cpus=0)(Dealer).remote(jobs, self.count)
        options = {"num_gpus": 1} if self.gpu else {"num_cpus": 1}
        self.actor_class = ray.remote(max_restarts=0, **options)(VideoActor)
        self.arguments = (load, self.gpu, streams, tracking, draw, out_dir)
        self.started = 0
        self.actors: dict[str, Any] = {}
        self.calls: dict[Any, str] = {}           # a track call under way → its actor
        self.idle: set[str] = set()
        self.empty_deaths = 0                     # actors in a row that died holding nothing

    def _start_actor(self) -> None:
        name = f"actor {self.started}"
        self.started += 1
        self.actors[name] = self.actor_class.remote(name, *self.arguments)
        self.idle.add(name)

    def run(self, ended: Callable[[int, VideoSummary], None], bar, stop: Event | None) -> None:
        """Deal until every video has ended; ``ended(number, summary)`` for each."""
        ray = self.ray
        self.unresolved, self.ended, self.bar = {job.number for job in self.jobs}, ended, bar
        for _ in range(self.count):
            self._start_actor()
        stopping = False
        try:
            while self.unresolved or self.calls:
                if stop is not None and stop.is_set() and not stopping:
                    stopping = True
                    self.dealer.stop.remote()
                waiting = self._collect()
                if stopping and not self.calls:
                    break
                if waiting and not stopping:
                    for name in sorted(self.idle):
                        self.calls[self.actors[name].track.remote(self.dealer)] = name
                    self.idle.clear()
                if not self.calls:
                    time.sleep(0.05)
                    continue
                done, _ = ray.wait(list(self.calls), num_returns=1, timeout=0.2)
                for call in done:
                    name = self.calls.pop(call)
                    try:
                        answer = ray.get(call)
                    except ray.exceptions.RayActorError as err:
                        answer = ("died", _death(err))
                    if answer is None:
                        self.idle.add(name)
                    elif answer[0] == "setup":                       # no actor can work: the run ends
                        self._give_up(f"Ray actor failed: {answer[1]}")
                        stopping = True
                    else:
                        self._lost(name, answer[1])
        finally:
            for actor in [*self.actors.values(), self.dealer]:
                try:
                    ray.kill(actor)
                except Exception:                                    # gone already
                    pass

    def _collect(self) -> int:
        """The dealer's news: videos ended, frames for the bar; returns the videos still to deal."""
        frames, news, waiting = self.ray.get(self.dealer.collect.remote())
        for number, summary in news:
            if number in self.unresolved:
                self.unresolved.discard(number)
                self.ended(number, summary)
        if self.bar is not None and frames > self.bar.n:
            self.bar.update(frames - self.bar.n)
        return waiting

    def _give_up(self, problem: str) -> None:
        """Every video not yet ended is reported with ``problem``; the dealer deals no more."""
        for number in sorted(self.unresolved):
            self.ended(number, VideoSummary(self.jobs[number].segment.source, problems=[problem]))
        self.unresolved.clear()
        self.dealer.stop.remote()

    def _lost(self, name: str, message: str) -> None:
        """Actor ``name`` died (or crashed): its videos dealt again or given up; a fresh actor in its place."""
        ray = self.ray
        try:
            ray.kill(self.actors.pop(name))
        except Exception:
            pass
        waiting = self._collect()                                    # what it reported before it died
        again, failed = ray.get(self.dealer.lost.remote(name, self.tries))
        for number in failed:
            self.unresolved.discard(number)
            self.ended(number, VideoSummary(self.jobs[number].segment.source, tries=self.tries,
                                            problems=[f"its Ray actor died each of the {self.tries} times it was "
                                                      f"tracked (the last: {message})"]))
        if self.bar is not None and again:                           # their frames are tracked again
            self.bar.total += sum(self.jobs[number].frames for number in again)
            self.bar.refresh()
        self.empty_deaths = 0 if again or failed else self.empty_deaths + 1
        if self.empty_deaths >= self.tries:                          # actors die before they take any video
            self._give_up(f"Ray actors died before they could track it (the last: {message})")
        elif again or waiting:
            self._start_actor()


def _death(err: Exception) -> str:
    """One line for an actor's death."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'the actor died'}"
