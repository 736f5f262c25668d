"""Readers for OpenFace's model spec files (``main_*.txt`` and the detector specs they name)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelFileError, read_bytes

MODEL_KEYS = ("PDM", "Triangulations", "PatchesIntensity", "PatchesCCNF", "PatchesCEN", "EarlyTermination")
MAIN_KEYS = ("LandmarkDetector", "LandmarkDetector_part", "FaceDetConversion", "DetectionValidator")


@dataclass
class ModelSpec:
    """A detector spec such as ``clnf_general.txt``: the PDM and patch-expert files, per scale.

    All paths are absolute. ``ccnf`` / ``cen`` / ``svr`` list one file per patch scale, in order.
    """

    path: Path
    pdm: Path
    triangulations: Path | None = None
    ccnf: list[Path] = field(default_factory=list)
    cen: list[Path] = field(default_factory=list)
    svr: list[Path] = field(default_factory=list)
    early_termination: Path | None = None

    def files(self) -> list[Path]:
        """Every file this spec names (the spec itself first)."""
        named = [self.path, self.pdm, self.triangulations, *self.ccnf, *self.cen, *self.svr, self.early_termination]
        return [p for p in named if p is not None]


@dataclass
class PartSpec:
    """A hierarchical part model (``LandmarkDetector_part`` line).

    Attributes:
        name: e.g. ``"inner"``, ``"left_eye_28"``.
        model: the part's own main spec.
        mapping: ((index in the main model, index in the part), ...) pairs.
    """

    name: str
    model: "MainSpec"
    mapping: tuple[tuple[int, int], ...]


@dataclass
class MainSpec:
    """A main model spec such as ``main_clnf_general.txt``."""

    path: Path
    detector: ModelSpec
    parts: list[PartSpec] = field(default_factory=list)
    face_detector_conversion: Path | None = None
    validator: Path | None = None

    def files(self) -> list[Path]:
        """Every file this spec and its parts name, each once, in reading order."""
        named = [self.path, *self.detector.files()]
        for part in self.parts:
            named += part.model.files()
        named += [p for p in (self.face_detector_conversion, self.validator) if p is not None]
        return list(dict.fromkeys(named))


def _absolute(path: str | Path) -> Path:
    """An absolute, normalised path; symbolic links are kept, so a spec's files are found beside it."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFileError(path, f"byte {err.start}", "expected a text spec file, found binary data") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if words and not words[0].startswith("#"):
            out.append((number, words))
    return out


def _named_file(spec: Path, line: int, words: list[str]) -> Path:
    if len(words) < 2:
        raise ModelFileError(spec, f"line {line}", f"expected a file name after {words[0]!r}")
    target = _absolute(spec.parent / words[1])
    if not target.is_file():
        raise ModelFileError(spec, f"line {line}", f"{words[0]} names {target}, which does not exist")
    return target


def read_model_spec(path: str | Path) -> ModelSpec:
    """Read a detector spec (``clnf_general.txt``, ``cen_general.txt``, ...)."""
    path = _absolute(path)
    found: dict[str, list[Path]] = {key: [] for key in MODEL_KEYS}
    for line, words in _lines(path):
        if words[0] not in MODEL_KEYS:
            raise ModelFileError(path, f"line {line}", f"expected one of {', '.join(MODEL_KEYS)}, found {words[0]!r}")
        found[words[0]].append(_named_file(path, line, words))
    if len(found["PDM"]) != 1:
        raise ModelFileError(path, None, f"expected exactly one PDM line, found {len(found['PDM'])}")
    if not (found["PatchesCCNF"] or found["PatchesCEN"] or found["PatchesIntensity"]):
        raise ModelFileError(path, None, "expected at least one PatchesCCNF, PatchesCEN or PatchesIntensity line")
    return ModelSpec(
        path=path,
        pdm=found["PDM"][0],
        triangulations=found["Triangulations"][0] if found["Triangulations"] else None,
        ccnf=found["PatchesCCNF"],
        cen=found["PatchesCEN"],
        svr=found["PatchesIntensity"],
        early_termination=found["EarlyTermination"][0] if found["EarlyTermination"] else None,
    )


def _mapping(path: Path, line: int, numbers: list[str]) -> tuple[tuple[int, int], ...]:
    if not numbers or len(numbers) % 2:
        raise ModelFileError(path, f"line {line}", f"expected pairs of landmark indices (main, part), found {len(numbers)} numbers")
    try:
        values = [int(n) for n in numbers]
    except ValueError:
        raise ModelFileError(path, f"line {line}", "expected integer landmark indices in the part mapping") from None
    if min(values) < 0:
        raise ModelFileError(path, f"line {line}", "expected non-negative landmark indices in the part mapping")
    return tuple(zip(values[0::2], values[1::2]))


def read_main_spec(path: str | Path) -> MainSpec:
    """Read a main spec (``main_clnf_general.txt``, ``main_ceclm_general.txt``, part specs), parts included."""
    path = _absolute(path)
    detector = None
    parts: list[PartSpec] = []
    conversion = validator = None
    for line, words in _lines(path):
        key = words[0]
        if key not in MAIN_KEYS:
            raise ModelFileError(path, f"line {line}", f"expected one of {', '.join(MAIN_KEYS)}, found {key!r}")
        target = _named_file(path, line, words)
        if key == "LandmarkDetector":
            if detector is not None:
                raise ModelFileError(path, f"line {line}", "expected one LandmarkDetector line, found a second")
            detector = read_model_spec(target)
        elif key == "LandmarkDetector_part":
            if len(words) < 3:
                raise ModelFileError(path, f"line {line}", "expected a part name after the part's spec file")
            parts.append(PartSpec(words[2], read_main_spec(target), _mapping(path, line, words[3:])))
        elif key == "FaceDetConversion":
            conversion = target
        else:
            validator = target
    if detector is None:
        raise ModelFileError(path, None, "expected a LandmarkDetector line, found none")
    return MainSpec(path, detector, parts, conversion, validator)
