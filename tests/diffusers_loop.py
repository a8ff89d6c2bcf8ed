"""diffusers' own sampling loop, shared by the parity tests."""

import math

import torch


def run_diffusers(unet, sched, start, sigmas, vp):
    """diffusers' loop from ``start`` (sigma-space) through its public ``scale_model_input``
    and ``step``; its state after each full step, back in sigma-space. ``vp``: the
    scheduler works on ``x / sqrt(1 + sigma^2)`` (DDIM, DPM-Solver)."""
    s0 = float(sigmas[0])
    sample = (start / math.sqrt(1 + s0**2) if vp else start).float()
    states = []
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            out = unet(sched.scale_model_input(sample, t), t).sample
            sample = sched.step(out, t, sample).prev_sample
            # Heun: a full step is done when it is back in its first stage (or at the end)
            if getattr(sched, "state_in_first_order", True) or i == len(sched.timesteps) - 1:
                states.append(sample)
    assert len(states) == len(sigmas) - 1
    if vp:
        states = [s * math.sqrt(1 + float(sig) ** 2) for s, sig in zip(states, sigmas[1:])]
    return states
