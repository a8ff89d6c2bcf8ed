"""A conditional diffusers UNet (Stable Diffusion's latent UNet) as a lab denoiser:
``lab.models.from_diffusers(unet, scheduler, negative_encoder_hidden_states=...)`` is
``cm(x, sigma, cond)``, guided by ``lab.guidance.cfg``; sampled with ``lab.sample`` it
gives the pipeline's own latents under ``LabScheduler`` with the same rule (relative error
at most 1e-4), for one-call, two-call and look-ahead rules alike.

The pipeline starts from VP noise ``z`` (``init_noise_sigma`` 1); the lab from the same
state in sigma-space, ``z * sqrt(1 + sigma_max^2)``, on the scheduler's lab schedule and
timestep map.
"""

import numpy as np
import pytest
import torch

import lab
from lab import LabScheduler
from lab.models import DiffusersDenoiser, from_diffusers

# fixtures: ddpm_unet, one_thread, sd
from .test_lab_scheduler import BATCH, TOL, ddpm_unet, one_thread, rel, run_sd, sd  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STEPS = 6


def lab_and_pipeline(sd, rule, guidance, **params):  # noqa: F811
    pipe, embeds, negative = sd
    sched = LabScheduler.from_config(pipe.scheduler.config, rule=rule, use_karras_sigmas=True,
                                     **params)
    z = torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = run_sd(sd, sched, steps=STEPS, latents=z, guidance=guidance)
    sigmas = sched.lab_schedule
    cm = from_diffusers(pipe.unet, sched, timestep=sched.timestep_map,
                        negative_encoder_hidden_states=negative)
    model = lab.guidance.cfg(cm, embeds, scale=guidance)
    traj = lab.sample(model, z * np.sqrt(1 + float(sigmas[0]) ** 2), sigmas,
                      lab.rules.get(rule, **params), seed=0)
    return traj, ours, sched


@pytest.mark.parametrize("rule, params", [("euler", {}), ("heun", {}), ("nesterov", {"beta": 0.5})])
def test_lab_sample_on_the_sd_unet_equals_the_pipeline(sd, rule, params):  # noqa: F811
    traj, pipeline_latents, sched = lab_and_pipeline(sd, rule, 7.5, **params)
    assert rel(traj.x, pipeline_latents) <= TOL
    assert traj.nfe == len(sched.timesteps)
    # the lab's trajectory of a latent pipeline: every state, every x0_hat, finite
    assert traj.xs.shape == (STEPS + 1, BATCH, 4, 8, 8) and torch.isfinite(traj.x0s).all()


def test_guidance_matters(sd):  # noqa: F811
    """The comparison can fail: guidance 7.5 in the lab against 1 in the pipeline."""
    pipe, embeds, negative = sd
    guided, _, _ = lab_and_pipeline(sd, "euler", 7.5)
    _, plain, _ = lab_and_pipeline(sd, "euler", 1.0)
    assert rel(guided.x, plain) > 100 * TOL


def test_a_bound_prompt_is_a_plain_denoiser(sd):  # noqa: F811
    pipe, embeds, negative = sd
    sched = LabScheduler.from_config(pipe.scheduler.config, rule="euler")
    model = from_diffusers(pipe.unet, sched, timestep=sched.timestep_map,
                           encoder_hidden_states=embeds)
    cm = from_diffusers(pipe.unet, sched, timestep=sched.timestep_map)
    x = torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(x, 3.0), cm(x, 3.0, embeds))
    # one embedding serves the whole batch
    assert torch.allclose(cm(x, 3.0, embeds[:1]), cm(x, 3.0, embeds[:1].expand(BATCH, -1, -1)))
    assert cm.conditional and cm.sample_shape == (4, 8, 8)


def test_bad_conditioning_names_the_way_out(sd, ddpm_unet):  # noqa: F811
    pipe, embeds, negative = sd
    sched = pipe.scheduler
    cm = from_diffusers(pipe.unet, sched)
    x = torch.randn(BATCH, 4, 8, 8)
    with pytest.raises(TypeError, match="call it as model\\(x, sigma, cond\\)"):
        cm(x, 1.0)
    with pytest.raises(ValueError, match="pass negative_encoder_hidden_states="):
        cm(x, 1.0, None)
    with pytest.raises(TypeError, match="text encoder's output"):
        cm(x, 1.0, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one embedding per sample"):
        cm(x, 1.0, torch.cat([embeds, embeds, embeds]))
    with pytest.raises(TypeError, match="takes no encoder_hidden_states"):
        from_diffusers(ddpm_unet, sched, encoder_hidden_states=embeds)
    with pytest.raises(TypeError, match="for conditional UNets"):
        from_diffusers(ddpm_unet, sched, negative_encoder_hidden_states=negative)
    assert not from_diffusers(ddpm_unet, sched).conditional
    assert isinstance(cm, DiffusersDenoiser)
