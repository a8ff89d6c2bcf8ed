"""``lab.LabScheduler`` inside diffusers pipelines: parity with diffusers' own schedulers,
one UNet call per model call of the rule, seeded noise, save/load, and bad input.

The pipelines are built from configs with seeded random weights (no hub, no tokenizer):
a tiny Stable Diffusion (``UNet2DConditionModel``, ``AutoencoderKL``, transformers'
``CLIPTextModel``) fed ``prompt_embeds`` / ``negative_prompt_embeds`` directly, with
classifier-free guidance on, and a ``DDPMPipeline`` on a tiny ``UNet2DModel``. Outputs
are compared as ``|a - b| / |b|`` (norms over the batch) on the final latents.

Which options make each pair match:

- ``euler`` = ``EulerDiscreteScheduler(use_karras_sigmas=True)`` on the SD config: Karras
  sigmas over the spaced timesteps' range, fractional timesteps from ``_sigma_to_t`` (the
  lab's ``"log"`` map, the default with Karras sigmas). Euler carries ``x`` itself and
  starts from ``noise * init_noise_sigma`` (``sigma_max`` with ``linspace`` spacing,
  ``sqrt(1 + sigma_max^2)`` with ``leading``); the LabScheduler carries the VP sample, so
  it is given that start in VP form, ``noise * init_noise_sigma / sqrt(1 + sigma_max^2)``.
- ``dpmpp_2m`` = ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
  use_karras_sigmas=True, lower_order_final=False, euler_at_final=False)``: its Karras
  sigmas span the whole table whatever the spacing (``timestep_spacing="linspace"`` in the
  LabScheduler), its timesteps are rounded (``timestep_mapping="round"``).
- In ``DDPMPipeline`` (no ``scale_model_input``, no ``init_noise_sigma``: VP samples only)
  ``euler`` = ``DDIMScheduler(timestep_spacing="trailing", clip_sample=False,
  set_alpha_to_one=True)`` with ``1000 % n == 0``, whole timesteps.
- Prediction types: Euler also with ``v_prediction``, DDIM also with ``sample``.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

import lab
from lab import LabScheduler
from lab.models.diffusers import tiny_stable_diffusion

from .test_to_diffusers import one_thread  # noqa: F401  (autouse: one thread for tiny nets)

TOL = 1e-4
STEPS = 8
BATCH = 2

# diffusers 0.42 calls np.array on torch tensors in set_timesteps (numpy 2 "copy" notice)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _sharpen(net):
    """Time embedding and output conv scaled 3x: an output of about unit variance that
    depends on the timestep enough for a wrong timestep map to show (see
    test_diffusers_parity's fixture)."""
    for name, p in net.named_parameters():
        if (name.startswith("time_embedding.") and name.endswith("weight")) \
                or name.startswith("conv_out."):
            p.mul_(3.0)
    return net


@pytest.fixture(scope="module")
def sd():
    """``lab.models.diffusers.tiny_stable_diffusion`` with a tiny random CLIP text encoder,
    and prompt and negative embeddings from it."""
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=100,
                                        max_position_embeddings=8, projection_dim=32))
    pipe = tiny_stable_diffusion(seed=0, text_encoder=text.eval())
    _sharpen(pipe.unet)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        embeds = text(torch.randint(0, 100, (BATCH, 8), generator=g))[0]
        negative = text(torch.zeros(BATCH, 8, dtype=torch.long))[0]
    return pipe, embeds, negative


def run_sd(sd, scheduler, steps=STEPS, latents=None, seed=0, guidance=7.5):
    pipe, embeds, negative = sd
    pipe.scheduler = scheduler
    if latents is None:
        latents = torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=steps,
                guidance_scale=guidance, latents=latents, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.fixture(scope="module")
def ddpm_unet():
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(16, 32),
                      layers_per_block=1, norm_num_groups=8,
                      down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"))
    return _sharpen(net.eval().requires_grad_(False))


def run_ddpm(unet, scheduler, steps=10, seed=0):
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return torch.from_numpy(pipe(batch_size=BATCH, num_inference_steps=steps,
                                 generator=torch.Generator().manual_seed(seed),
                                 output_type="np").images)


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


DPM = dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True,
           lower_order_final=False, euler_at_final=False)


@pytest.fixture(scope="module")
def sd_config_saved(sd):
    return dict(sd[0].scheduler.config)


@pytest.mark.parametrize("spacing, prediction", [("linspace", "epsilon"),
                                                 ("leading", "v_prediction")])
def test_euler_reproduces_euler_karras_in_stable_diffusion(sd, sd_config_saved, spacing,
                                                           prediction):
    options = dict(use_karras_sigmas=True, timestep_spacing=spacing, prediction_type=prediction)
    euler = EulerDiscreteScheduler.from_config(sd_config_saved, **options)
    euler.set_timesteps(STEPS)
    noise = torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = run_sd(sd, euler, latents=noise)
    sigma_max = float(euler.sigmas[0])
    ours = run_sd(sd, LabScheduler.from_config(sd_config_saved, rule="euler", **options),
                  latents=noise * float(euler.init_noise_sigma) / np.sqrt(1 + sigma_max**2))
    assert rel(ours, ref) <= TOL


def test_dpmpp_2m_reproduces_dpm_solver_in_stable_diffusion(sd, sd_config_saved):
    ref = run_sd(sd, DPMSolverMultistepScheduler.from_config(sd_config_saved, **DPM))
    lab_sched = LabScheduler.from_config(sd_config_saved, rule="dpmpp_2m", use_karras_sigmas=True,
                                         timestep_spacing="linspace", timestep_mapping="round")
    assert rel(run_sd(sd, lab_sched), ref) <= TOL
    # the comparison can fail: fractional timesteps where DPM-Solver rounds them
    lab_sched = LabScheduler.from_config(sd_config_saved, rule="dpmpp_2m", use_karras_sigmas=True,
                                         timestep_spacing="linspace", timestep_mapping="log")
    assert rel(run_sd(sd, lab_sched), ref) > 10 * TOL


def test_ddpm_pipeline_parity(ddpm_unet):
    dpm = DPMSolverMultistepScheduler(**DPM)
    ours = LabScheduler.from_config(dpm.config, rule="dpmpp_2m", timestep_mapping="round")
    assert rel(run_ddpm(ddpm_unet, ours), run_ddpm(ddpm_unet, dpm)) <= TOL
    for prediction in ("epsilon", "sample"):
        ddim = DDIMScheduler(timestep_spacing="trailing", clip_sample=False,
                             set_alpha_to_one=True, prediction_type=prediction)
        ours = LabScheduler.from_config(ddim.config, rule="euler")
        assert rel(run_ddpm(ddpm_unet, ours), run_ddpm(ddpm_unet, ddim)) <= TOL
    momentum = LabScheduler.from_config(ddim.config, rule="momentum", beta=0.5)
    assert rel(run_ddpm(ddpm_unet, momentum), run_ddpm(ddpm_unet, ddim)) > 10 * TOL


def count_calls(net):
    calls = []
    return calls, net.register_forward_hook(lambda module, args, out: calls.append(1))


def test_heun_makes_2n_minus_1_unet_calls_in_stable_diffusion(sd, sd_config_saved):
    calls, hook = count_calls(sd[0].unet)
    try:
        sched = LabScheduler.from_config(sd_config_saved, rule="heun", use_karras_sigmas=True)
        out = run_sd(sd, sched, steps=4)
    finally:
        hook.remove()
    assert len(calls) == 2 * 4 - 1 == len(sched.timesteps) and sched.order == 2
    assert torch.isfinite(out).all()


# every registered rule but afs, which replaces the first call (refused: see below)
@pytest.mark.parametrize("rule", [r for r in lab.rules.available() if r != "afs"])
def test_every_rule_runs_with_its_nfe_in_unet_calls(ddpm_unet, rule):
    calls, hook = count_calls(ddpm_unet)
    try:
        sched = LabScheduler(rule=rule)
        out = run_ddpm(ddpm_unet, sched, steps=5)
    finally:
        hook.remove()
    assert len(calls) == lab.rules.nfe(rule, sched.lab_schedule) == len(sched.timesteps)
    assert torch.isfinite(out).all()


def test_a_stochastic_rule_follows_the_pipelines_generator(ddpm_unet):
    sched = LabScheduler(rule="ancestral", eta=1.0)
    a, b = run_ddpm(ddpm_unet, sched, seed=3), run_ddpm(ddpm_unet, sched, seed=3)
    c = run_ddpm(ddpm_unet, sched, seed=4)
    assert torch.equal(a, b)
    assert rel(a, c) > 0.01
    # the noise is the rule's: the same start without it (eta = 0) ends elsewhere
    assert rel(run_ddpm(ddpm_unet, LabScheduler(rule="ancestral", eta=0.0), seed=3), a) > 0.01


def test_save_and_load_keep_the_rule(tmp_path, ddpm_unet, sd_config_saved):
    sched = LabScheduler.from_config(sd_config_saved, rule="momentum", beta=0.5)
    sched.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["rule"] == "momentum" and saved["rule_params"] == {"beta": 0.5}
    loaded = LabScheduler.from_pretrained(tmp_path)
    assert loaded.rule.config == sched.rule.config == {"lr_scale": 1.0, "beta": 0.5}
    assert loaded.config.beta_schedule == "scaled_linear"
    assert torch.equal(run_ddpm(ddpm_unet, loaded, steps=4), run_ddpm(ddpm_unet, sched, steps=4))
    # a new rule drops the old one's parameters; a parameter alone keeps the rule
    assert LabScheduler.from_config(loaded.config, rule="heun").rule.config_name == "heun"
    assert LabScheduler.from_config(loaded.config, beta=0.7).rule.config_name == \
        "momentum(beta=0.7)"
    # inside a whole pipeline: model_index.json names lab's class, and loading finds it
    DDPMPipeline(unet=ddpm_unet, scheduler=sched).save_pretrained(tmp_path / "pipeline")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipeline", local_files_only=True)
    assert isinstance(pipe.scheduler, LabScheduler)
    assert pipe.scheduler.rule.config_name == "momentum(beta=0.5)"


def test_add_noise_is_the_vp_sample_at_the_timesteps_sigma():
    sched = LabScheduler(rule="heun")
    sched.set_timesteps(5)
    x0, n = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = sched.timesteps[2:3]
    s = float(sched.call_sigmas[2])
    expected = (x0 + s * n) / np.sqrt(1 + s**2)
    assert torch.allclose(sched.add_noise(x0, n, t), expected, rtol=1e-5, atol=1e-6)


def test_img2img_starts_inside_the_schedule(ddpm_unet):
    """set_begin_index (img2img pipelines: t_start * order) starts at a step's first call,
    runs the rule over the rest of the schedule, and refuses a call inside a step."""
    sched = LabScheduler(rule="heun")
    sched.set_timesteps(4)
    sched.set_begin_index(2)
    z = torch.randn(1, 2, 8, 8)
    sample = sched.add_noise(torch.zeros_like(z), z, sched.timesteps[2:3])
    for t in sched.timesteps[2:]:
        sample = sched.step(ddpm_unet(sample, t).sample, t, sample).prev_sample
    assert sched.step_index == len(sched.timesteps) and torch.isfinite(sample).all()
    sched.set_timesteps(4)
    sched.set_begin_index(1)
    with pytest.raises(ValueError, match="inside a step"):
        sched.step(z, sched.timesteps[1], z)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rule": "nonsense"}, ValueError, "unknown rule 'nonsense'; available: .*heun"),
    ({"rule": "momentum", "bogus": 1}, TypeError, r"unknown parameter\(s\) \['bogus'\]; it takes "
                                                  r"\['beta', 'lr_scale'\]"),
    ({"rule": "momentum", "beta": 2.0}, ValueError, "outside its valid range"),
    ({"rule": "ancestral", "rule_params": {"rule": lab.rules.get("heun")}}, TypeError,
     "give the inner rule by name"),
    ({"prediction_type": "flow_prediction"}, ValueError, "prediction_type is 'flow_prediction'"),
    ({"beta_schedule": "cosine"}, ValueError, "beta_schedule must be one of"),
    ({"timestep_mapping": "nearest"}, ValueError, "timestep_mapping must be"),
])
def test_bad_input_names_the_way_out(kwargs, error, match):
    with pytest.raises(error, match=match):
        LabScheduler(**kwargs)


def test_a_flow_matching_config_is_refused():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="flow-matching scheduler's"):
        LabScheduler.from_config(FlowMatchEulerDiscreteScheduler().config, rule="euler")


def test_a_rule_that_does_not_start_on_the_latents_is_refused():
    sd_table = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched = LabScheduler(rule="churn", **sd_table)  # churns at sigma_max 14.6 < s_tmax 50
    with pytest.raises(ValueError, match="set s_tmax below that sigma"):
        sched.set_timesteps(5)
    LabScheduler(rule="churn", s_tmax=10.0, **sd_table).set_timesteps(5)
    with pytest.raises(ValueError, match="does not start by calling the model"):
        LabScheduler(rule="afs", rule_params={"rule": "euler"}, **sd_table).set_timesteps(5)
