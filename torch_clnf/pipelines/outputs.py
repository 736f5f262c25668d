"""Where each input's outputs go: one distinct name per input, so that no output overwrites another.

Outputs are named after their inputs (``out/session.csv``). Two inputs of the same name
(``subj1/session.mp4`` and ``subj2/session.mp4``; ``clip.wmv`` beside ``clip.avi``) would write the
same ``session.csv`` or ``clip.csv``, their rows interleaved. So when names coincide — also names
that differ only in case, one file on macOS and Windows — the inputs' paths relative to their
common folder are mirrored under the output folder, for every input of the run
(``out/subj1/session.csv``, ``out/subj2/session.csv``), and inputs whose names still coincide
(in one folder) keep their suffix in the name (``clip_wmv.csv``, ``clip_avi.csv``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def output_stems(sources: Sequence[str | Path], out_dir: str | Path | None = None,
                 suffixes: Sequence[str] = (".csv",)) -> list[Path]:
    """For each source, the path of its outputs without their ends (``stem + ".csv"``, …).

    Args:
        sources: files or folders (a folder's name is its stem); distinct after resolving links.
        out_dir: the folder for the outputs (mirroring the sources' relative paths where their
            names coincide); None: beside each source.
        suffixes: the ends of the outputs that will be written (``".csv"``, ``"_landmarks.avi"``),
            checked against the sources.
    Raises:
        ValueError: a source is given twice, or an output would overwrite a source or another
            output (names that no renaming rule separates); nothing has been written then.
    """
    paths = [Path(s) for s in sources]
    resolved = [p.resolve() for p in paths]
    seen: dict[Path, Path] = {}
    for path, real in zip(paths, resolved):
        if real in seen:
            raise ValueError(f"{path} is given twice (also as {seen[real]})")
        seen[real] = path
    if out_dir is None:
        folders = [p.parent for p in paths]
    else:
        folders = [Path(out_dir)] * len(paths)
        if _clashes(folders, paths):
            common = Path(os.path.commonpath([r.parent for r in resolved]))
            folders = [Path(out_dir) / r.parent.relative_to(common) for r in resolved]
    clashes = _clashes(folders, paths)
    stems = []
    for folder, path in zip(folders, paths):
        name = _stem(path)
        if _key(folder / name) in clashes and path.suffix:
            name += "_" + path.suffix.lstrip(".")
        stems.append(folder / name)
    taken = {_key(r): f"the input {p}" for r, p in zip(resolved, paths)}       # what each path holds
    for path, stem in zip(paths, stems):
        for suffix in suffixes:
            target = Path(str(stem) + suffix)
            key = _key(target.resolve())
            if key in taken:
                raise ValueError(f"{target}, an output of {path}, would overwrite {taken[key]}: rename one of them "
                                 "or write the outputs elsewhere")
            taken[key] = f"an output of {path}"
    return stems


def _clashes(folders: list[Path], paths: list[Path]) -> set[str]:
    """The output names (as :func:`_key`) that more than one input would get in these folders."""
    keys = [_key(folder / _stem(path)) for folder, path in zip(folders, paths)]
    return {k for k in keys if keys.count(k) > 1}


def _stem(path: Path) -> str:
    return path.stem if path.suffix and not path.is_dir() else path.name


def _key(path: Path) -> str:
    """A path as file systems that ignore case compare it."""
    return os.path.normcase(str(path)).casefold()
