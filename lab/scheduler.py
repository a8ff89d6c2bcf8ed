"""``LabScheduler``: any lab rule as a diffusers scheduler.

    from lab import LabScheduler
    pipe.scheduler = LabScheduler.from_config(pipe.scheduler.config, rule="momentum", beta=0.5)
    image = pipe(prompt, num_inference_steps=20).images[0]

The scheduler reads the pipeline's VP noise schedule from the config (``betas`` from
``beta_schedule`` / ``beta_start`` / ``beta_end`` or ``trained_betas``,
``num_train_timesteps``, ``timestep_spacing``, ``steps_offset``, ``use_karras_sigmas``,
``prediction_type``) and turns it into a lab schedule: the sigmas of
:func:`lab.schedules.from_alphas_cumprod`, or Karras sigmas over their range.

**The sample it carries** is the VP sample ``z = x / sqrt(1 + sigma^2)`` (as DDPM, DDIM
and DPM-Solver do): ``init_noise_sigma`` is 1 and ``scale_model_input`` is the identity,
so pipelines that skip both (``DDPMPipeline``) work too. Inside :meth:`LabScheduler.step`
the network's output becomes the lab's ``x0_hat`` at the current sigma with the adapter's
formulas (:func:`lab.models.diffusers.x0_from_prediction`), the rule moves ``x`` in
sigma-space, and the result goes back to VP form.

**One timestep per model call.** A pipeline calls the UNet once per listed timestep and
``step`` once per call; a rule calls the model as often as it needs per step (Heun twice,
RK4 four times, a look-ahead rule at another point). :meth:`set_timesteps` runs the rule
once on a stand-in model to list the sigma of every call it will make (their number is
``lab.rules.nfe``), and ``timesteps`` holds one timestep per call, repeated sigmas and
all, as diffusers' ``HeunDiscreteScheduler`` does.

**Record and replay.** A rule's ``step`` is ordinary code that calls ``model(x, sigma)``
and cannot be suspended half way. So each call to :meth:`step` re-runs the rule's step
from its start on a copy of the rule, with a model that answers the calls already made
from a record and, at the first call not yet answered, stops the run (an exception
carrying the point and sigma asked for). That point, in VP form, is ``prev_sample``: the
pipeline evaluates its UNet there next. When the rule's step runs to its end, the copy
(with its updated history) is kept and the next step begins. Noise a stochastic rule
draws is recorded the same way, drawn once from the pipeline's ``generator``. Replays
cost only the rule's tensor arithmetic; the UNet is called exactly the rule's NFE.

Between steps ``prev_sample`` is the sample at the new sigma, except for rules whose
first call of a step is elsewhere (Nesterov's look-ahead point, churn's raised sigma):
there the pipeline holds that point, and the state itself stays inside the scheduler.
The first call of the first step must be on the pipeline's starting latents.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_euler_discrete import (
    EulerDiscreteSchedulerOutput as LabSchedulerOutput,  # prev_sample, pred_original_sample
)
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from . import rules as _rules
from . import schedules
from .denoiser import sigma_dtype
from .models.diffusers import (
    PREDICTION_TYPES,
    TIMESTEP_MAPPINGS,
    sigma_to_timestep,
    vp_scale,
    x0_from_prediction,
)

__all__ = ["LabScheduler", "LabSchedulerOutput"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class _ModelCall(Exception):
    """Raised inside a replayed rule step at its first unanswered model call."""

    def __init__(self, x: Tensor, sigma: Tensor):
        super().__init__("model call")
        self.x, self.sigma = x, sigma


def _alphas_cumprod(config) -> Tensor:
    """``alphas_cumprod`` exactly as diffusers' schedulers compute it (float32)."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = torch.tensor(np.asarray(config.trained_betas), dtype=torch.float32)
    elif config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    elif config.beta_schedule == "scaled_linear":
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n,
                               dtype=torch.float32) ** 2
    elif config.beta_schedule == "squaredcos_cap_v2":
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

        betas = betas_for_alpha_bar(n)
    else:
        raise ValueError(f"LabScheduler: beta_schedule must be one of {BETA_SCHEDULES} (or give "
                         f"trained_betas), got {config.beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def _plan_calls(rule: _rules.Rule, sigmas: Tensor) -> tuple[list[list[float]], bool]:
    """The sigma of every model call ``rule`` makes over ``sigmas``, step by step, from a
    run on a stand-in model (the denoiser of N(0, 1) data), and whether its first call is
    on the starting sample itself at the first sigma."""
    rule = copy.deepcopy(rule)
    grid = sigmas.to(torch.float32).reshape(-1, 1, 1)
    x = start = torch.ones(1, 1)
    plan: list[list[float]] = []
    first_on_start = []

    def model(x_, s_):
        if not first_on_start:
            first_on_start.append(x_ is start and float(s_.flatten()[0]) == float(grid[0]))
        plan[-1].append(float(s_.flatten()[0]))
        return x_ / (1 + s_**2)

    rule.reset(sigmas)
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            plan.append([])
            x, _ = rule.step(model, x, grid[i], grid[i + 1], torch.zeros_like)
    return plan, bool(first_on_start and first_on_start[0])


class LabScheduler(SchedulerMixin, ConfigMixin):
    """Any lab rule inside a diffusers pipeline (see the module docstring).

    ``rule`` names a registered rule (``lab.rules.available()``); its parameters come as
    keyword arguments (``LabScheduler(rule="momentum", beta=0.5)``) or as the dict
    ``rule_params``, and are kept in the config, so ``save_pretrained`` /
    ``from_pretrained`` restore them. ``timestep_mapping`` picks how a sigma becomes the
    UNet's timestep (``lab.models.TIMESTEP_MAPPINGS``): default ``"log"`` with Karras
    sigmas (diffusers' ``_sigma_to_t``, as ``EulerDiscreteScheduler``), ``"linear"``
    without (the inverse of ``linspace`` spacing; whole timesteps either way for
    ``leading`` / ``trailing``); ``"round"`` reproduces ``DPMSolverMultistepScheduler``'s
    rounded Karras timesteps.
    """

    order = 1  # set per instance: the rule's model calls in an interior step
    # from_config of any VP scheduler's config: their own options are expected, not noise
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear", trained_betas=None,
                 prediction_type: str = "epsilon", use_karras_sigmas: bool = False,
                 timestep_spacing: str = "linspace", steps_offset: int = 0,
                 timestep_mapping: str | None = None, rule: str = "euler",
                 rule_params: dict | None = None, **kwargs):
        params = {**(rule_params or {}), **kwargs}
        for key, value in params.items():  # the config is JSON: rules inside by name
            if isinstance(value, _rules.Rule):
                raise TypeError(f"LabScheduler: give the inner rule by name ({key}="
                                f"{value.name!r}); a Rule object cannot be saved in a config")
        if not isinstance(rule, str) or rule not in _rules.available():
            raise ValueError(f"LabScheduler: unknown rule {rule!r}; available: "
                             f"{', '.join(_rules.available())}")
        try:
            self.rule = _rules.get(rule, **params)
        except (TypeError, ValueError) as err:
            raise type(err)(f"LabScheduler: {err}") from None
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"LabScheduler serves pipelines whose UNet predicts one of "
                             f"{PREDICTION_TYPES}; this one's prediction_type is "
                             f"{prediction_type!r} (flow-matching pipelines are not VP models: "
                             "keep their own scheduler)")
        if timestep_mapping is not None and timestep_mapping not in TIMESTEP_MAPPINGS:
            raise ValueError(f"LabScheduler: timestep_mapping must be None or one of "
                             f"{TIMESTEP_MAPPINGS}, got {timestep_mapping!r}")
        if timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ValueError(f"LabScheduler: timestep_spacing must be 'linspace', 'leading' or "
                             f"'trailing', got {timestep_spacing!r}")
        self.register_to_config(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas,
            prediction_type=prediction_type, use_karras_sigmas=use_karras_sigmas,
            timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            timestep_mapping=timestep_mapping, rule=rule, rule_params=params)
        self.alphas_cumprod = _alphas_cumprod(self.config)
        self.table = schedules.vp_sigmas(self.alphas_cumprod)  # float64, ascending in t
        self.order = max(1, self.rule.calls(2.0, 1.0))
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = self.sigmas = self.call_sigmas = None
        self._begin_index = None
        self._step_index = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``; keyword arguments that are not scheduler options are
        the rule's parameters. Naming a ``rule`` drops the parameters of the config's."""
        source = dict(config or {})
        no_betas = not {"beta_schedule", "beta_start", "trained_betas"} & set(source)
        if "FlowMatch" in str(source.get("_class_name", "")) or (no_betas and "shift" in source):
            raise ValueError(f"LabScheduler serves VP (DDPM-family) pipelines; this config is a "
                             f"flow-matching scheduler's ({source.get('_class_name', 'shift')}: "
                             "SD3, Flux, ...), whose model is not a VP denoiser: keep its own "
                             "scheduler")
        options = set(cls._get_init_keys(cls)) - {"self", "kwargs"}
        params = {k: kwargs.pop(k) for k in list(kwargs) if k not in options}
        if "rule" in kwargs:
            kwargs["rule_params"] = {**(kwargs.get("rule_params") or {}), **params}
        elif params:
            saved = dict(config.get("rule_params") or {}) if config is not None else {}
            kwargs["rule_params"] = {**saved, **(kwargs.get("rule_params") or {}), **params}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- the schedule --------------------------------------------------------------------
    @property
    def timestep_map(self) -> str:
        """The sigma-to-timestep map in use (``timestep_mapping`` or its default)."""
        if self.config.timestep_mapping is not None:
            return self.config.timestep_mapping
        return "log" if self.config.use_karras_sigmas else "linear"

    @property
    def step_index(self) -> int | None:
        """The model call the next :meth:`step` answers (an index into ``timesteps``)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at call ``begin_index`` (img2img pipelines: ``t_start * order``); it must be
        the first call of a step."""
        self._begin_index = int(begin_index)

    def lab_sigmas(self, num_inference_steps: int) -> Tensor:
        """The lab schedule (float64, descending, last 0) the config gives for ``n`` steps."""
        c = self.config
        spaced = schedules.from_alphas_cumprod(self.alphas_cumprod, num_inference_steps,
                                               c.timestep_spacing, c.steps_offset)
        if not c.use_karras_sigmas or num_inference_steps < 2:
            return spaced
        return schedules.karras(num_inference_steps, float(spaced[-2]), float(spaced[0]))

    def set_timesteps(self, num_inference_steps: int | None = None, device=None,
                      timesteps=None, sigmas=None) -> None:
        """Plan a run: the lab schedule, and one timestep per model call of the rule.

        ``sigmas`` (descending) replaces the config's schedule (a final 0 is appended when
        missing); custom ``timesteps`` are not supported (give sigmas).
        """
        if timesteps is not None:
            raise ValueError("LabScheduler takes no custom timesteps: pass sigmas= (descending "
                             "noise levels) or num_inference_steps")
        if sigmas is not None:
            sig = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
            if float(sig[-1]) != 0.0:
                sig = torch.cat([sig, sig.new_zeros(1)])
            sig = schedules.validate(sig)
        elif num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps or sigmas")
        else:
            sig = self.lab_sigmas(num_inference_steps)
        plan, first_on_start = _plan_calls(self.rule, sig)
        if not first_on_start:
            raise ValueError(
                f"LabScheduler: {self.rule.config_name} does not start by calling the model on "
                f"the starting sample at sigma {float(sig[0]):.4g} (it adds noise or skips the "
                "first call), but a pipeline evaluates its UNet on its own starting latents "
                "first. For churn, set s_tmax below that sigma; or sample with lab.sample on "
                "lab.models.from_diffusers(unet, scheduler)")
        expected = _rules.nfe(self.rule, sig)
        calls = [s for step in plan for s in step]
        if len(calls) != expected:  # a rule whose calls() disagrees with its step()
            raise RuntimeError(f"{self.rule.config_name} made {len(calls)} model calls over "
                               f"{len(sig) - 1} steps, but lab.rules.nfe says {expected}")
        self.num_inference_steps = len(sig) - 1
        self.lab_schedule = sig
        self.sigmas = sig.to(device=device, dtype=torch.float32)
        self.call_sigmas = torch.tensor(calls, dtype=torch.float64)
        self._first_call = np.cumsum([0] + [len(step) for step in plan])  # per step
        self.timesteps = sigma_to_timestep(self.call_sigmas, self.table, self.timestep_map
                                           ).to(device=device, dtype=torch.float32)
        self._begin_index = None
        self._step_index = None

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The identity: the pipeline's sample is already the UNet's VP input."""
        return sample

    # -- stepping -----------------------------------------------------------------------
    def _start(self, timestep, sample: Tensor, generator) -> None:
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        if self._begin_index is not None:
            call = self._begin_index
        else:  # diffusers' convention: the first call with this timestep
            t = torch.as_tensor(timestep, dtype=torch.float32, device=self.timesteps.device)
            hits = torch.nonzero(self.timesteps == t.reshape(-1)[0]).flatten()
            call = int(hits[0]) if len(hits) else 0
        firsts = self._first_call.tolist()
        if call not in firsts[:-1]:
            raise ValueError(f"LabScheduler: call {call} is inside a step of "
                             f"{self.rule.config_name}; begin at one of {firsts[:-1]} "
                             "(a step's first call: t_start * order for whole steps)")
        self._step_index = call
        self._n = firsts.index(call)
        self._run = copy.deepcopy(self.rule)
        self._run.reset(self.lab_schedule[self._n:])
        work = torch.float64 if sample.dtype == torch.float64 else torch.float32
        self._x = sample.to(work) / vp_scale(self._sigma(self._n, sample))
        self._answers, self._noises, self._query = [], [], None
        self._advance(generator)
        if self._query is None or self._query.x is not self._x:
            raise ValueError(f"LabScheduler: {self.rule.config_name} does not call the model on "
                             "the starting sample first; see set_timesteps")

    def _sigma(self, n: int, like: Tensor) -> Tensor:
        """Step ``n``'s sigma as the loop hands it to rules: ``(B, 1, ..., 1)``."""
        s = self.sigmas.to(device=like.device, dtype=sigma_dtype(like))[n]
        return s.reshape(1, *[1] * (like.ndim - 1)).expand(like.shape[0], *[1] * (like.ndim - 1))

    def _attempt(self, generator):
        """Replay the current step from its start; ``(rule, x_next)`` when it completes,
        else raise :class:`_ModelCall` at the first unanswered call."""
        rule, answers, drawn = copy.deepcopy(self._run), iter(self._answers), iter(self._noises)

        def model(x, sigma):
            answer = next(answers, None)
            if answer is None:
                raise _ModelCall(x, sigma)
            return answer

        def noise(like):
            z = next(drawn, None)
            if z is None:
                z = randn_tensor(like.shape, generator=generator, device=like.device,
                                 dtype=like.dtype)
                self._noises.append(z)
            return z

        x, s = self._x, self._sigma(self._n, self._x)
        x_next, _ = rule.step(model, x, s, self._sigma(self._n + 1, x), noise)
        return rule, x_next.to(x.dtype)

    def _advance(self, generator) -> None:
        """Run the rule until its next model call (``self._query``) or the schedule's end
        (``self._query = None``), completing every step on the way."""
        while self._n < self.num_inference_steps:
            try:
                with torch.no_grad():
                    rule, x_next = self._attempt(generator)
            except _ModelCall as call:
                self._query = call
                return
            self._run, self._x, self._n = rule, x_next, self._n + 1
            self._answers, self._noises = [], []
        self._query = None

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None,
             return_dict: bool = True):
        """Answer the rule's pending model call with the pipeline's ``model_output`` (for
        ``sample``) and run the rule to its next call: ``prev_sample`` is where the UNet is
        wanted next, in VP form, or the final sample after the last call."""
        if self._step_index is None:
            self._start(timestep, sample, generator)
        if self._query is None:
            raise RuntimeError(f"LabScheduler: all {len(self.timesteps)} model calls are "
                               "answered; call set_timesteps again for a new run")
        planned = float(self.call_sigmas[self._step_index])
        asked = float(self._query.sigma.flatten()[0])
        if not math.isclose(asked, planned, rel_tol=1e-5):
            raise RuntimeError(f"{self.rule.config_name} asked for the model at sigma {asked:.6g}"
                               f" where the plan said {planned:.6g}: its calls depend on the "
                               "sample, which a pipeline's fixed timesteps cannot follow")
        s = self._query.sigma
        x = sample.to(self._x.dtype) / vp_scale(s).to(self._x.dtype)
        if self._query.x is self._x:  # the step's start: take the pipeline's latents as
            self._x = x               # they are (an inpainting pipeline edits them)
        x0 = x0_from_prediction(x, s.to(x.dtype), model_output.to(x.dtype),
                                self.config.prediction_type)
        self._answers.append(x0)
        self._advance(generator)
        self._step_index += 1
        if self._query is None:
            prev = self._x
        else:
            prev = self._query.x * vp_scale(self._query.sigma).to(self._query.x.dtype)
        prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return prev, x0
        return LabSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    # -- img2img ------------------------------------------------------------------------
    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps) -> Tensor:
        """The VP sample ``(x0 + sigma n) / sqrt(1 + sigma^2)`` at each timestep's sigma:
        the planned call's when it is one of ``timesteps``, else read off the table."""
        t = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1)
        t = t.to(torch.float64).expand(original_samples.shape[0]) if t.numel() == 1 else \
            t.to(torch.float64)
        sigma = _timestep_to_sigma(t, self.table.to(t.device))
        if self.timesteps is not None:
            listed = self.timesteps.to(t.device, torch.float64)
            for k, value in enumerate(t.tolist()):
                hits = torch.nonzero(listed == value).flatten()
                if len(hits):
                    sigma[k] = self.call_sigmas[int(hits[0])]
        shape = (-1, *[1] * (original_samples.ndim - 1))
        s = sigma.reshape(shape).to(original_samples.dtype)
        return (original_samples + s * noise) * vp_scale(s)


def _timestep_to_sigma(t: Tensor, table: Tensor) -> Tensor:
    """The sigma at fractional timesteps, log sigma interpolated linearly in t."""
    steps = torch.arange(len(table), dtype=torch.float64, device=t.device)
    return torch.from_numpy(np.exp(np.interp(t.cpu().numpy(), steps.cpu().numpy(),
                                             table.log().cpu().numpy()))).to(t.device)
