"""``python -m experiments.bench``: what the sampling loop itself costs.

Two figures, each measured in one run so that the machine's mood cancels out:

1. **Loop overhead against diffusers.** Euler, Heun and DPM-Solver++(2M) on a near-free
   model (one multiply), 1 thread, a batch of 64 x 1 x 28 x 28, 50 Karras steps: the
   lab's ``lab.sample`` against diffusers' own loop (``scale_model_input``, the model,
   ``scheduler.step``) with the matching scheduler on the same sigmas. Both sides call
   the same near-free function, ``x -> x / 2`` (for the lab a plain callable, so no
   Denoiser input checks are counted as the loop's), and the model's own cost is
   subtracted from both: the ratio is that of what the two loops add around a model
   call. Runs alternate, and the median of ``--repeats`` counts.
2. **Model-call share.** ``fashion-edm`` sampled at 20 steps: the share of wall time
   spent inside model calls. The rest is the loop's.

It is a benchmark, not a test: it prints and writes ``results/bench/bench.json``
(``--out``); nothing fails on a slow day.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import lab
from lab.io import write_json

RULES = ("euler", "heun", "dpmpp_2m")
OUT = Path(__file__).resolve().parents[1] / "results" / "bench"


def near_free(x, sigma=None):
    """A model that costs one multiply (read as x0_hat by the lab, as eps by diffusers)."""
    return x * 0.5


def _model_seconds(x: torch.Tensor, calls: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        near_free(x)
    return (time.perf_counter() - start) / calls


def _diffusers_scheduler(rule: str, steps: int):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

    common = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": True}
    if rule == "euler":
        sched = EulerDiscreteScheduler(**common)
    elif rule == "heun":
        sched = HeunDiscreteScheduler(**common)
    else:
        sched = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++",
                                            solver_order=2, lower_order_final=False,
                                            euler_at_final=False, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    return sched


def _time_diffusers(rule: str, x: torch.Tensor, steps: int) -> tuple[float, int]:
    sched = _diffusers_scheduler(rule, steps)
    sample = x * sched.init_noise_sigma
    start = time.perf_counter()
    calls = 0
    for t in sched.timesteps:
        inp = sched.scale_model_input(sample, t)
        out = near_free(inp)
        calls += 1
        sample = sched.step(out, t, sample).prev_sample
    return time.perf_counter() - start, calls


def _time_lab(rule: str, x: torch.Tensor, sigmas: torch.Tensor) -> tuple[float, int]:
    start = time.perf_counter()
    traj = lab.sample(near_free, x * sigmas[0], sigmas, rule, seed=0, record="final")
    return time.perf_counter() - start, traj.nfe


def loop_overhead(steps: int = 50, batch: int = 64, repeats: int = 7) -> list[dict]:
    """Median wall time per model call of the lab's loop and diffusers', per rule, less
    the model's own time."""
    x = lab.noise((batch, 1, 28, 28), seed=0)
    model_us = _model_seconds(x) * 1e6
    rows = []
    for rule in RULES:
        sigmas = torch.from_numpy(_diffusers_scheduler(rule, steps).sigmas.numpy()).double()
        # diffusers repeats sigmas for Heun's second stage; the lab takes the plain grid
        sigmas = torch.unique_consecutive(sigmas)
        lab_t, diff_t = [], []
        for _ in range(repeats + 1):  # the first round warms both up and is dropped
            lt, lab_calls = _time_lab(rule, x, sigmas)
            dt, diff_calls = _time_diffusers(rule, x, steps)
            lab_t.append(lt / lab_calls)
            diff_t.append(dt / diff_calls)
        lab_us = statistics.median(lab_t[1:]) * 1e6 - model_us
        diff_us = statistics.median(diff_t[1:]) * 1e6 - model_us
        rows.append({"rule": rule, "steps": steps, "lab_calls": lab_calls,
                     "diffusers_calls": diff_calls, "model_us_per_call": round(model_us, 1),
                     "lab_us_per_call": round(lab_us, 1),
                     "diffusers_us_per_call": round(diff_us, 1),
                     "ratio": round(lab_us / diff_us, 3)})
    return rows


def model_share(model_name: str = "fashion-edm", steps: int = 20, batch: int = 16,
                rule: str = "heun") -> dict:
    """Share of sampling wall time spent inside the model's calls."""
    model = lab.load(model_name)
    inside = 0.0

    def timed(x, sigma):
        nonlocal inside
        start = time.perf_counter()
        out = model(x, sigma)
        inside += time.perf_counter() - start
        return out

    sigmas = lab.schedules.karras(steps, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    x = lab.noise((batch, 1, 28, 28), seed=0) * sigmas[0]
    lab.sample(timed, x[:2], sigmas[:3], rule, seed=0)  # warm-up
    inside = 0.0
    start = time.perf_counter()
    traj = lab.sample(timed, x, sigmas, rule, seed=0, record="final")
    total = time.perf_counter() - start
    return {"model": model_name, "rule": rule, "steps": steps, "batch": batch, "nfe": traj.nfe,
            "seconds": round(total, 3), "model_share": round(inside / total, 5)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-model", action="store_true", help="skip the fashion-edm share")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {"loop": loop_overhead(args.steps, args.batch, args.repeats),
                  "torch": torch.__version__, "machine": lab.zoo.machine()}
    finally:
        torch.set_num_threads(threads)
    print(f"loop cost per model call, batch {args.batch} x 1 x 28 x 28, {args.steps} Karras "
          f"steps, 1 thread, near-free model ({result['loop'][0]['model_us_per_call']} us, "
          f"subtracted), median of {args.repeats} alternating runs:")
    print(f"  {'rule':<10}{'lab us':>10}{'diffusers us':>14}{'ratio':>8}")
    for r in result["loop"]:
        print(f"  {r['rule']:<10}{r['lab_us_per_call']:>10.1f}{r['diffusers_us_per_call']:>14.1f}"
              f"{r['ratio']:>8.2f}")
    if not args.no_model:
        share = model_share()
        result["model_share"] = share
        print(f"fashion-edm, {share['rule']} {share['steps']} steps ({share['nfe']} calls), batch "
              f"{share['batch']}: {100 * share['model_share']:.2f} % of {share['seconds']} s "
              "inside model calls")
    write_json(args.out / "bench.json", result)
    return result


if __name__ == "__main__":
    main()
