"""Models as denoisers: exact analytic ones and the diffusers adapter."""

from .analytic import Empirical, Gaussian, GaussianMixture
from .diffusers import TIMESTEP_MAPPINGS, DiffusersDenoiser, from_diffusers
from .networks import EDM, MLP, NoisePredictor, UNet
from .vp_export import VPEpsilonModel, to_diffusers

__all__ = ["Gaussian", "GaussianMixture", "Empirical", "DiffusersDenoiser", "from_diffusers",
           "TIMESTEP_MAPPINGS", "EDM", "NoisePredictor", "MLP", "UNet", "to_diffusers",
           "VPEpsilonModel"]
