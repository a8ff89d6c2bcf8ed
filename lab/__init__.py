"""The sampler lab: diffusion samplers seen as optimisers.

    import lab
    sig  = lab.schedules.karras(20)
    x    = lab.noise((16, 2), seed=0) * sig[0]
    traj = lab.sample(model, x, sig, "heun")
"""

# models, noise_level and perceptual define the model kinds lab.load rebuilds (lab.registry)
from . import (
    data,
    guidance,
    metrics,
    models,
    noise_level,
    perceptual,
    rules,
    schedule_search,
    schedules,
    seeding,
)
from .denoiser import CallCounter, Denoiser
from .guidance import img2img, inpaint
from .recommend import recommend
from .sample import NonFiniteError, Step, sample, sample_at_budget, steps, try_sample_at_budget
from .seeding import noise
from .trajectory import Trajectory
from .zoo import load

# lab.schedules.optimize samples, so it lives upstairs (lab.schedule_search); attaching it
# here keeps lab.schedules importing nothing above it.
schedules.optimize = schedule_search.optimize

__version__ = "0.1.0"


def __getattr__(name):
    # LabScheduler subclasses diffusers' SchedulerMixin, which pulls in diffusers' scheduler
    # stack (slow to import): loaded on first use; `from lab import LabScheduler` still works.
    if name == "LabScheduler":
        from .scheduler import LabScheduler

        return LabScheduler
    raise AttributeError(f"module 'lab' has no attribute {name!r}")


__all__ = ["Denoiser", "CallCounter", "NonFiniteError", "Step", "Trajectory", "data", "load",
           "guidance", "img2img", "inpaint", "LabScheduler",
           "metrics", "models", "noise", "noise_level", "perceptual", "recommend", "rules",
           "sample", "sample_at_budget", "schedules", "seeding", "steps",
           "try_sample_at_budget"]
