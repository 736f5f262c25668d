"""The fitter's parameters, OpenFace's CLNF defaults."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PartConfig:
    """How a hierarchical part model is refitted (OpenFace's per-part settings)."""

    window_sizes: tuple[int, ...]
    reg_factor: float
    sigma: float
    weight_factor: float = 0.0


PART_DEFAULTS = {
    "inner": PartConfig((9,), reg_factor=2.5, sigma=1.75, weight_factor=2.5),
    "left_eye_28": PartConfig((3, 5, 9), reg_factor=0.5, sigma=1.0),
    "right_eye_28": PartConfig((3, 5, 9), reg_factor=0.5, sigma=1.0),
    "left_eye": PartConfig((5, 3), reg_factor=0.1, sigma=2.0),
    "right_eye": PartConfig((5, 3), reg_factor=0.1, sigma=2.0),
    "mouth": PartConfig((7, 7), reg_factor=1.0, sigma=2.0),
    "brow": PartConfig((11, 9), reg_factor=10.0, sigma=3.5),
}

# Head rotations (pitch, yaw, roll; radians) a multi-view fit starts from: still images by default,
# and a face first found in a video.
ROTATION_HYPOTHESES = ((0, 0, 0), (0, -0.5236, 0), (0, 0.5236, 0), (0, -0.96, 0), (0, 0.96, 0), (0, 0, 0.5236),
                       (0, 0, -0.5236), (0, -1.57, 0), (0, 1.57, 0), (0, -1.22, 0.698), (0, 1.22, -0.698))


@dataclass(frozen=True)
class FitConfig:
    """NU-RLMS fitting parameters; the defaults are OpenFace 2.2's for the CLNF general model.

    Attributes:
        window_sizes: response-window size per patch scale when fitting from a box (0 skips the scale).
        tracking_window_sizes: the same when tracking from the previous frame.
        sigma: KDE standard deviation of the mean-shift, reference-frame pixels.
        reg_factor: weight of the shape prior (``reg_factor / eigenvalue`` on the local params).
        weight_factor: weight of the experts' confidences (0: plain RLMS).
        iterations: iterations of each phase (rigid, then rigid + non-rigid) per scale.
        convergence: a phase stops when the shape moves less than this (pixels, whole shape).
        refine_parameters: adapt sigma, reg_factor and weight_factor to each scale's patch size.
        refine_hierarchical: refit the part models (inner face, eyes) after the main fit.
        compile: run the fit from AOTInductor packages (:mod:`~torch_clnf.models.compiling`: the
            main fit's scales, the parts' rounds, CalcParams steps, the validator's warp): one face
            or one video 2–2.7× faster on a CPU, same results up to float rounding; each new shape
            (model, windows, batch size; images of any size share it) compiles once, some 3 minutes
            for one face's fit and tracking on a small CPU (``torch-clnf compile`` does it ahead of
            time), and is loaded from the weights cache afterwards, by later processes too.
        capture: fit the scales of a batch as one captured graph (:mod:`~torch_clnf.fitting.capture`):
            on CUDA compiled and replayed as CUDA graphs, batches padded to powers of two; every
            iteration runs (finished faces masked), same results up to float rounding. Elsewhere
            the same padded static fit runs uncompiled (no faster).
        min_scale: a fit whose scale drops below this fails (the face is too small).
        kde_step: the mean-shift's KDE grid, reference-frame pixels.
        shape_sigmas: local params are clamped to ± this many standard deviations.
        sparse: evaluate CEN experts at every second window position (OpenFace's speed-up).
        cen_bfloat16: run the CEN experts' layers (CE-CLM) in bfloat16, products accumulated in
            float32: half their weights' memory, a CE-CLM fit 1.3-2× faster on CPUs with
            AVX512-BF16 or AMX (elsewhere the layers stay in float32), landmarks some 0.002-0.05 px
            (median) from the float32 fit's (docs/speed.md); no effect on CLNF.
        validate: score every fit with the detection validator (when the model has one).
        validation_boundary: a fit succeeds when the validator's certainty is above this.
        hypotheses_completed: a multi-view fit without an early-termination file (CLNF) fits every
            head-rotation hypothesis at the first scale and completes this many, the most likely
            there, keeping the most likely completed fit (:func:`~torch_clnf.fitting.fit_hypotheses`);
            as many as the hypotheses (11, 12 for a detected face with the detector's start) or
            more: OpenFace's basic search, every hypothesis completed.
        parts: per part name, how to refit it.
    """

    window_sizes: tuple[int, ...] = (11, 9, 7, 5)
    tracking_window_sizes: tuple[int, ...] = (0, 9, 7, 0)
    sigma: float = 1.5
    reg_factor: float = 25.0
    weight_factor: float = 0.0
    iterations: int = 5
    convergence: float = 0.01
    refine_parameters: bool = True
    refine_hierarchical: bool = True
    compile: bool = False
    capture: bool = False
    min_scale: float = 0.25
    kde_step: float = 0.1
    shape_sigmas: float = 3.0
    sparse: bool = True
    cen_bfloat16: bool = False
    validate: bool = True
    validation_boundary: float = 0.725
    hypotheses_completed: int = 1
    parts: dict[str, PartConfig] = field(default_factory=lambda: dict(PART_DEFAULTS))

    def for_ceclm(self) -> "FitConfig":
        """OpenFace's CE-CLM changes: sigma × 1.5, reg_factor × 0.9."""
        return replace(self, sigma=self.sigma * 1.5, reg_factor=self.reg_factor * 0.9)

    def for_part(self, name: str) -> "FitConfig":
        """The config a part model is refitted with (no parameter refinement, no sub-parts)."""
        part = self.parts.get(name)
        if part is None:
            raise KeyError(f"no fitting settings for part {name!r}; add it to FitConfig.parts")
        return replace(self, window_sizes=part.window_sizes, tracking_window_sizes=part.window_sizes,
                       reg_factor=part.reg_factor, sigma=part.sigma, weight_factor=part.weight_factor,
                       refine_parameters=False, refine_hierarchical=False)

    def at_scale(self, patch_scale: float) -> tuple[float, float, float]:
        """(sigma, reg_factor, weight_factor) for experts of a patch scale (OpenFace's refinement)."""
        if not self.refine_parameters:
            return self.sigma, self.reg_factor, self.weight_factor
        octaves = math.log2(patch_scale / 0.25)
        reg = self.reg_factor - 15 * octaves
        return (self.sigma + 0.25 * octaves, reg if reg > 0 else 0.001,
                self.weight_factor + 2 * self.weight_factor * octaves)
