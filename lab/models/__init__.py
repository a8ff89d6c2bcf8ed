"""Models as denoisers: exact analytic ones and the diffusers adapter."""

from .analytic import Empirical, Gaussian, GaussianMixture
from .diffusers import TIMESTEP_MAPPINGS, DiffusersDenoiser, from_diffusers
from .networks import EDM, MLP, ConditionalEDM, NoisePredictor, UNet
from .vp_export import (
    VPEpsilonModel,
    carries_vp_sample,
    sample_with_scheduler,
    scheduler_sigmas,
    scheduler_steps,
    to_diffusers,
)

__all__ = ["Gaussian", "GaussianMixture", "Empirical", "DiffusersDenoiser", "from_diffusers",
           "TIMESTEP_MAPPINGS", "EDM", "ConditionalEDM", "NoisePredictor", "MLP", "UNet",
           "to_diffusers",
           "VPEpsilonModel", "carries_vp_sample", "scheduler_sigmas", "scheduler_steps",
           "sample_with_scheduler"]
