"""Resumable runs: a manifest of the videos done, so that running the same command again does only the rest.

A video's CSV is written as ``NAME.csv.part`` and renamed to ``NAME.csv`` when the video has been
tracked to its end; then a line is appended to the run's manifest, ``torch_clnf_runs.jsonl`` in the
output folder (``--out``; without it, the outputs' common folder): the source's path, size and
modification time, the CSV, the model and the options that change the rows, and what happened
(frames, frames with a face, problems, seconds, tries). A later run skips a video whose last line
says it was complete with the same source (path, size, modification time) and options, and whose
CSV is still there; every other video is tracked again from its first frame (its ``.csv.part``
written anew, never appended to). ``force`` tracks every video again.

One process writes the manifest (the process that runs the pipeline; workers and Ray actors report
to it), a line at a time, so that a run killed at any moment leaves whole lines; a line cut short
by a crash is ignored.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

MANIFEST = "torch_clnf_runs.jsonl"
PART_END = ".part"       # a CSV being written: ``NAME.csv.part``
# FitConfig fields that change how fast, not what, is computed
_SPEED_ONLY = ("compile", "capture")
# FitConfig fields added after runs were first recorded: left out at these defaults, so that the
# records of earlier runs still match
_ADDED_LATER = {"cen_bfloat16": False}


def run_options(model: str, fit: Any, dtype: Any, tracking: Any, draw: bool) -> dict[str, Any]:
    """What makes two runs' rows the same: the model's name, its fit settings (a ``FitConfig``),
    its dtype, the tracking settings (a ``TrackingConfig``) and whether drawings are written; as
    plain JSON values. Devices, threads, workers and segments are left out: they change the rows
    by float rounding only."""
    fit_settings = {k: v for k, v in dataclasses.asdict(fit).items()
                    if k not in _SPEED_ONLY and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    options = {"model": model, "fit": fit_settings, "dtype": str(dtype).removeprefix("torch."),
               "tracking": dataclasses.asdict(tracking), "draw": bool(draw)}
    return json.loads(json.dumps(options, default=str))


def part_path(csv: Path) -> Path:
    """Where the CSV ``csv`` is written until its video is complete."""
    return csv.with_name(csv.name + PART_END)


def manifest_folder(outputs: Sequence[Path], out_dir: str | Path | None) -> Path:
    """The folder of a run's manifest: ``out_dir``, else the outputs' common folder."""
    if out_dir is not None:
        return Path(out_dir)
    return Path(os.path.commonpath([str(Path(o).absolute().parent) for o in outputs]))


@dataclass
class SourceState:
    """A source as the manifest identifies it: its absolute path, size in bytes and modification
    time in nanoseconds (a folder of images: its files' count and latest modification)."""

    path: str
    size: int
    mtime_ns: int

    @staticmethod
    def of(source: Path) -> "SourceState":
        source = Path(source).absolute()
        try:
            if source.is_dir():
                stats = [p.stat() for p in source.iterdir() if p.is_file()]
                return SourceState(str(source), len(stats), max((s.st_mtime_ns for s in stats), default=0))
            stat = source.stat()
            return SourceState(str(source), stat.st_size, stat.st_mtime_ns)
        except OSError:
            return SourceState(str(source), -1, -1)


@dataclass
class RunManifest:
    """A run's manifest: the last record of each CSV (read at open), and new records appended.

    Attributes:
        path: the manifest file.
        options: this run's :func:`run_options`.
        records: per CSV path (absolute, as text), its last record.
    """

    path: Path
    options: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def open(folder: str | Path, options: Mapping[str, Any]) -> "RunManifest":
        """The manifest in ``folder`` (empty where there is none yet)."""
        manifest = RunManifest(Path(folder) / MANIFEST, dict(options))
        try:
            lines = manifest.path.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                record = json.loads(line)
                manifest.records[str(record["csv"])] = record
            except (ValueError, KeyError, TypeError):       # a line cut short by a crash
                continue
        return manifest

    def done(self, source: Path, csv: Path) -> dict[str, Any] | None:
        """The record of a video complete with this source and these options, its CSV still there
        (a source that could not be read at all has no CSV); else None."""
        record = self.records.get(str(Path(csv).absolute()))
        if not record or not record.get("complete") or record.get("options") != self.options:
            return None
        state = SourceState.of(source)
        if [record.get("source"), record.get("size"), record.get("mtime_ns")] != [state.path, state.size,
                                                                                    state.mtime_ns]:
            return None
        if record.get("written") and not Path(csv).is_file():
            return None
        return record

    def record(self, source: Path, csv: Path, complete: bool, written: bool, **facts: Any) -> None:
        """Append a video's record: ``complete`` (tracked to its end), ``written`` (its CSV exists),
        and ``facts`` (frames, problems, seconds, …; plain JSON values)."""
        state = SourceState.of(source)
        record = {"source": state.path, "size": state.size, "mtime_ns": state.mtime_ns,
                  "csv": str(Path(csv).absolute()), "complete": complete, "written": written,
                  "options": self.options, **facts, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self.records[record["csv"]] = record
