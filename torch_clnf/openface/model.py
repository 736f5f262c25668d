"""Read a whole OpenFace landmark model: a main spec and every file it names."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .ccnf import CCNFPatchExperts, read_ccnf
from .cen import CENPatchExperts, read_cen
from .early_termination import EarlyTermination, read_early_termination
from .errors import ModelFileError
from .pdm import PDMData, read_pdm
from .spec import MainSpec, read_main_spec


@dataclass
class PartModel:
    """A hierarchical part: its name, its model, and (index in main, index in part) pairs."""

    name: str
    model: "OpenFaceModel"
    mapping: list[tuple[int, int]]


@dataclass
class OpenFaceModel:
    """Everything a landmark fitter needs from OpenFace's files, as plain tensors.

    Attributes:
        name: the main spec's file name.
        pdm: the point distribution model.
        ccnf: CCNF experts per patch scale (empty for CE-CLM).
        cen: CEN experts per patch scale (empty for CLNF).
        early_termination: CE-CLM's per-view early termination, if the spec names one.
        parts: hierarchical part models.
    """

    name: str
    pdm: PDMData
    ccnf: list[CCNFPatchExperts] = field(default_factory=list)
    cen: list[CENPatchExperts] = field(default_factory=list)
    early_termination: EarlyTermination | None = None
    parts: list[PartModel] = field(default_factory=list)

    @property
    def experts(self) -> list[CCNFPatchExperts] | list[CENPatchExperts]:
        return self.cen or self.ccnf


def read_model(spec: str | Path | MainSpec) -> OpenFaceModel:
    """Read a main spec (e.g. ``main_clnf_general.txt``) and all the files it names.

    Raises:
        ModelFileError: a file is missing or malformed, or the files disagree with each other
            (landmark counts, part mappings).
    """
    main = spec if isinstance(spec, MainSpec) else read_main_spec(spec)
    detector = main.detector
    if detector.svr:
        raise ModelFileError(detector.path, None, "SVR patch experts (the older CLM) are not supported; use a CLNF or CE-CLM spec")
    pdm = read_pdm(detector.pdm)
    ccnf = [read_ccnf(p) for p in detector.ccnf]
    cen = [read_cen(p) for p in detector.cen]
    for path, experts in zip(detector.ccnf + detector.cen, ccnf + cen):
        if experts.num_points != pdm.num_points:
            raise ModelFileError(path, None, f"expected experts for the PDM's {pdm.num_points} landmarks, found {experts.num_points}")
    early = None
    if detector.early_termination is not None:
        views = (cen or ccnf)[0].num_views
        early = read_early_termination(detector.early_termination, views)
    parts = []
    for part in main.parts:
        sub = read_model(part.model)
        for main_index, part_index in part.mapping:
            if main_index >= pdm.num_points or part_index >= sub.pdm.num_points:
                raise ModelFileError(main.path, None, f"part {part.name!r}: mapping {main_index} -> {part_index} is outside "
                                     f"the {pdm.num_points}-point model or the {sub.pdm.num_points}-point part")
        parts.append(PartModel(part.name, sub, list(part.mapping)))
    return OpenFaceModel(main.path.name, pdm, ccnf, cen, early, parts)
