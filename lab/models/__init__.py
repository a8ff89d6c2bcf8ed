"""Models as denoisers: exact analytic ones and the diffusers adapter."""

from .analytic import Empirical, Gaussian, GaussianMixture
from .diffusers import TIMESTEP_MAPPINGS, DiffusersDenoiser, from_diffusers
from .networks import EDM, MLP, NoisePredictor, UNet

__all__ = ["Gaussian", "GaussianMixture", "Empirical", "DiffusersDenoiser", "from_diffusers",
           "TIMESTEP_MAPPINGS", "EDM", "NoisePredictor", "MLP", "UNet"]
