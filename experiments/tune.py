"""``python -m experiments tune <rule> --budget B [--model fashion-edm] [--trials N]``.

Searches the rule's declared parameters and its Karras schedule (``sigma_min``,
``sigma_max``, ``rho``) with optuna's TPE sampler (:func:`lab.tune.tune`): FID of 512
calibration samples for image models, the exact error for the analytic ones. Trials go
to ``results/tune/tune.db`` (SQLite), so a killed search resumes; the best configuration
goes to ``results/tune/best.json``, from where ``few_step_frontier`` takes it as a cell
and scores it on the study's own noise, never on the calibration noise it was tuned on.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

import lab
from lab import io
from lab.tune import tune

OUT = Path(__file__).resolve().parents[1] / "results" / "tune"
EXACT = {"mixture": lab.data.ring_mixture, "gaussian": lab.data.image_gaussian}


def load_model(name: str):
    if name in EXACT:
        model = EXACT[name]()
        model.sigma_min, model.sigma_max = 0.002, 80.0  # the studies' range
        return model
    return lab.load(name)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments tune", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("rule", help="a registry rule, e.g. extrapolate, ghvb, unipc")
    p.add_argument("--budget", type=int, required=True, help="model calls")
    p.add_argument("--model", default="fashion-edm",
                   help="a shipped model (FID objective) or 'mixture' / 'gaussian' (exact error)")
    p.add_argument("--trials", type=int, default=40, help="trials in all (resumes)")
    p.add_argument("--calibration", type=int, default=512, help="calibration samples")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    objective = "exact" if args.model in EXACT else "fid"
    torch.set_num_threads(1)
    found = tune(load_model(args.model), args.rule, args.budget, trials=args.trials,
                 storage=args.out / "tune.db", objective=objective,
                 calibration=args.calibration, model_name=args.model, progress=True)
    best_path = args.out / "best.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else {}
    entry = {"model": args.model, "calibration": args.calibration, **asdict(found)}
    best[f"{args.model}/{args.rule}/{args.budget}"] = entry
    io.write_json(best_path, best)
    print(f"{args.rule} at {args.budget} calls on {args.model}: {objective} {found.value:.4g} "
          f"after {found.trials} trials; params {found.params}, schedule {found.schedule}")
    return entry


if __name__ == "__main__":
    main()
