"""The fitter: area sampling, KDE mean-shift, NU-RLMS, scales, views and part models."""
from .config import FitConfig, PartConfig, ROTATION_HYPOTHESES
from .fitter import FitState, ModelFitter
from .hypotheses import fit_hypotheses, start_from_points
from .mean_shift import log_likelihood, mean_shift
from .rlms import PhaseResult, ResponseFrame, nu_rlms
from .sampling import align_similarity, sample_areas

__all__ = ["FitConfig", "FitState", "ModelFitter", "PartConfig", "PhaseResult", "ROTATION_HYPOTHESES", "ResponseFrame",
           "align_similarity", "fit_hypotheses", "log_likelihood", "mean_shift", "nu_rlms", "sample_areas",
           "start_from_points"]
