"""One training loop for every trainable model: log-normal (or log-uniform) sigmas,
AdamW with warm-up and cosine decay, EMA weights, periodic checkpoints and an exact
resume. The loss is the model's own: any registered kind (:mod:`lab.registry`) whose
class has ``training_loss(x0, sigma, noise)`` trains here (``EDM``'s also takes a
``perceptual`` term).

    python -m lab train experiments/configs/fashion-edm.json [--resume] [--ship]
        [--device cpu|cuda|mps] [--dtype float32|bfloat16|float16]

A run is a :class:`TrainConfig` (a json file). Checkpoints hold the model, EMA,
optimiser, scheduler and random-generator state, so ``--resume`` continues to the
bit-identical next step. ``--ship`` writes the EMA weights to ``lab/weights/``.

Device and precision are run options, not part of the config: the batches are drawn on
the CPU from the run's generator and then moved, so a run is the same stream of batches
on every device. ``--dtype bfloat16`` / ``float16`` is mixed precision: the forward pass
and loss under ``torch.autocast``, the weights, gradients, optimiser and EMA in float32
(float16 adds a gradient scaler against underflow). float32 runs no autocast at all.
"""

from __future__ import annotations

import inspect
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import devices, registry, zoo
from .io import atomic_path
from .seeding import derive_seed

__all__ = ["TrainConfig", "Trainer", "load_config", "build_model"]


@dataclass
class TrainConfig:
    """Everything a training run depends on."""

    name: str
    model: dict  # {"kind": a kind with a training_loss (lab.registry), **its config}
    data: str = "fashion-mnist"  # or a 2-D toy name from lab.data.TOYS
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    ema: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_range: list | None = None  # [lo, hi]: log-uniform sigmas instead of log-normal
    loss: str = "mse"  # or "perceptual"
    perceptual_net: str = "fashion-perceptual"
    perceptual_weight: float = 0.1
    seed: int = 0
    data_size: int | None = None  # use the first n training examples (smoke tests)
    checkpoint_every: int = 250
    threads: int | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        trainable = registry.trainable_kinds()
        kind = self.model.get("kind")
        if kind not in trainable:
            raise ValueError(f"model.kind must be one of {trainable} (the kinds whose class "
                             f"has a training_loss), got {kind!r}")
        if self.loss not in ("mse", "perceptual"):
            raise ValueError(f"loss must be 'mse' or 'perceptual', got {self.loss!r}")
        if self.loss == "perceptual" and not _takes_perceptual(registry.lookup(kind)):
            able = [k for k in trainable if _takes_perceptual(registry.lookup(k))]
            raise ValueError(f"the perceptual loss needs x0_hat images, and a {kind!r} model's "
                             f"training_loss takes no perceptual term: use one of {able}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def load_config(path) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no training config at {path}; see experiments/configs/")
    try:
        return TrainConfig(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path} is not a valid training config: {err}") from err


def training_data(cfg: TrainConfig) -> tuple[Tensor, Tensor | None]:
    """``(images, labels)``; the 2-D toys have no labels (None)."""
    from . import data

    labels = None
    if cfg.data == "fashion-mnist":
        images, labels = data.fashion_mnist("train")
    else:
        images = data.toy(cfg.data, cfg.data_size or 100_000, seed=derive_seed(cfg.seed, 7))
    if cfg.data_size:
        images = images[: cfg.data_size]
        labels = labels[: cfg.data_size] if labels is not None else None
    return images, labels


def _takes_perceptual(cls) -> bool:
    """Whether ``cls.training_loss`` accepts a perceptual term (models that predict x0)."""
    return "perceptual" in inspect.signature(cls.training_loss).parameters


def build_model(spec: dict):
    """A fresh model from a config's ``model`` entry: its ``kind`` and that class's config."""
    spec = dict(spec)
    return registry.lookup(spec.pop("kind")).from_config(spec)


class Trainer:
    """Runs a :class:`TrainConfig` on ``device`` in ``dtype`` (float32, or mixed precision
    with float32 weights); ``checkpoint_dir`` holds ``last.pt``."""

    def __init__(self, cfg: TrainConfig, checkpoint_dir, command: str | None = None, *,
                 device: str = "cpu", dtype: str = "float32"):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.device, self.dtype = devices.device(device), devices.dtype(dtype)
        self.cfg = cfg
        self.dir = Path(checkpoint_dir)
        self.command = command or " ".join(shlex.quote(a) for a in sys.argv)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(derive_seed(cfg.seed, 1))  # network initialisation
        self.model = build_model(cfg.model).to(self.device)  # initialised on the CPU
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_factor)
        self.gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 2))  # a CPU stream
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.dtype == torch.float16)
        self.step, self.wall, self.losses = 0, 0.0, []
        self.data, self.labels = training_data(cfg)
        # A model whose training_loss takes labels (class-conditional) gets the batch's,
        # and one that takes a generator draws its own randomness (label dropout) from the
        # trainer's stream, so a resumed run draws the same.
        takes = inspect.signature(type(self.model).training_loss).parameters
        self.wants_labels, self.wants_generator = "labels" in takes, "generator" in takes
        if self.wants_labels and self.labels is None:
            raise ValueError(f"a {cfg.model['kind']!r} model trains on labelled data; "
                             f"{cfg.data!r} has no labels (use 'fashion-mnist')")
        self.loss_terms = {}  # extra keyword arguments of the model's training_loss
        if cfg.loss == "perceptual":
            from .perceptual import perceptual_loss

            net = zoo.load(cfg.perceptual_net).to(self.device)
            self.loss_terms = {"perceptual": lambda a, b: perceptual_loss(net, a, b),
                               "perceptual_weight": cfg.perceptual_weight}

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``final_lr_fraction``."""
        cfg = self.cfg
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (
            1 + math.cos(math.pi * progress))

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "last.pt"

    def state(self) -> dict:
        return {"config": asdict(self.cfg), "step": self.step, "wall": self.wall,
                "losses": self.losses, "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "gen": self.gen.get_state(),
                "scaler": self.scaler.state_dict()}

    def save_checkpoint(self) -> None:
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(self.state(), tmp)

    def resume(self) -> bool:
        """Load ``last.pt`` if present; False when there is nothing to resume."""
        if not self.checkpoint_path.exists():
            return False
        try:
            # on the CPU: the generator state stays there; load_state_dict moves the rest
            state = torch.load(self.checkpoint_path, weights_only=False, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise ValueError(f"{self.checkpoint_path} is unreadable ({err}); delete it to start "
                             "over") from err
        if state["config"] != asdict(self.cfg):
            raise ValueError(f"{self.checkpoint_path} was written by a different config; "
                             "use another checkpoint folder or delete it")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        if state.get("scaler"):  # absent from checkpoints older than mixed precision
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.wall, self.losses = state["step"], state["wall"], state["losses"]
        return True

    def batch(self):
        cfg, g = self.cfg, self.gen
        idx = torch.randint(len(self.data), (cfg.batch_size,), generator=g)
        x0 = self.data[idx]
        if cfg.sigma_range:
            lo, hi = (math.log(v) for v in cfg.sigma_range)
            sigma = (lo + (hi - lo) * torch.rand(cfg.batch_size, generator=g)).exp()
        else:
            sigma = (cfg.p_mean + cfg.p_std * torch.randn(cfg.batch_size, generator=g)).exp()
        noise = torch.randn(x0.shape, generator=g)
        extra = {}
        if self.wants_labels:
            extra["labels"] = self.labels[idx].to(self.device)
        if self.wants_generator:
            extra["generator"] = g
        return x0.to(self.device), sigma.to(self.device), noise.to(self.device), extra

    def train_step(self) -> float:
        self.model.train()
        x0, sigma, noise, extra = self.batch()
        with torch.autocast(self.device.type, dtype=self.dtype,
                            enabled=self.dtype != torch.float32):
            loss = self.model.training_loss(x0, sigma, noise, **extra, **self.loss_terms)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower lr "
                                     f"(now {self.sched.get_last_lr()[0]:.3g}) and resume")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # the scaler is a no-op unless float16
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        self.losses.append(loss.item())
        return self.losses[-1]

    def run(self, until: int | None = None, progress: bool = True) -> None:
        """Train to step ``until`` (default: the config's steps), checkpointing as it goes."""
        from tqdm.auto import tqdm

        until = self.cfg.steps if until is None else min(until, self.cfg.steps)
        bar = tqdm(total=until, initial=self.step, desc=self.cfg.name, disable=not progress)
        while self.step < until:
            start = time.perf_counter()
            loss = self.train_step()
            self.wall += time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % self.cfg.checkpoint_every == 0 or self.step == until:
                self.save_checkpoint()
        bar.close()

    @property
    def final_loss(self) -> float:
        tail = self.losses[-200:]
        return sum(tail) / max(1, len(tail))

    def ship(self, folder=zoo.WEIGHTS, half: bool = True) -> Path:
        """Write the EMA weights and the training record to ``lab/weights/``."""
        model = self.ema.module
        epochs = self.step * self.cfg.batch_size / len(self.data)
        return zoo.save(model, self.cfg.name, folder=folder, half=half, training={
            "command": self.command, "config": asdict(self.cfg), "steps": self.step,
            "epochs": round(epochs, 3), "final_loss": round(self.final_loss, 6),
            "device": str(self.device), "dtype": devices.dtype_name(self.dtype),
            "wall_seconds": round(self.wall, 1)})


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lab train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a training config json (experiments/configs/*.json)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--until", type=int, default=None, help="stop at this step (resumable)")
    p.add_argument("--checkpoints", default="checkpoints", help="folder for checkpoints")
    p.add_argument("--ship", action="store_true", help="write the EMA weights to lab/weights")
    p.add_argument("--device", default="cpu", help="cpu, cuda (cuda:N) or mps (default cpu)")
    p.add_argument("--dtype", default="float32", choices=tuple(devices.DTYPES),
                   help="float32, or mixed precision with float32 weights (default float32)")
    args = p.parse_args(argv)
    try:
        devices.device(args.device)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    cfg = load_config(args.config)
    options = "".join(f" --{k} {v}" for k, v in (("device", args.device), ("dtype", args.dtype))
                      if v != p.get_default(k))
    trainer = Trainer(cfg, Path(args.checkpoints) / cfg.name,
                      command=f"python -m lab train {shlex.quote(args.config)}{options} --ship",
                      device=args.device, dtype=args.dtype)
    if trainer.checkpoint_path.exists() and not args.resume:
        raise SystemExit(f"{trainer.checkpoint_path} exists: pass --resume to continue it, or "
                         "delete it to start over")
    if args.resume and trainer.resume():
        print(f"resumed {cfg.name} at step {trainer.step}", flush=True)
    trainer.run(args.until)
    print(f"{cfg.name}: step {trainer.step}, final loss {trainer.final_loss:.4f}, "
          f"{trainer.wall / 60:.1f} min", flush=True)
    if args.ship:
        if trainer.step < cfg.steps:
            raise SystemExit("refusing to ship an unfinished run; train to the end first")
        print(f"shipped {trainer.ship()}")
    return 0
