"""nn.Modules built from the readers' tensors: the PDM and the CCNF / CEN patch experts."""
from .ccnf import CCNFExperts
from .cen import CENExperts, sparse_positions
from .pdm import PointDistributionModel
from .windows import PatchResponse, window_statistics

__all__ = ["CCNFExperts", "CENExperts", "PatchResponse", "PointDistributionModel", "sparse_positions",
           "window_statistics"]
