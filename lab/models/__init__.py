"""Models as denoisers: exact analytic ones and the diffusers adapter."""

from .analytic import Empirical, Gaussian, GaussianMixture
from .diffusers import TIMESTEP_MAPPINGS, DiffusersDenoiser, from_diffusers

__all__ = ["Gaussian", "GaussianMixture", "Empirical", "DiffusersDenoiser", "from_diffusers",
           "TIMESTEP_MAPPINGS"]
