"""Devices and precision: sampling in bfloat16 stays close to float32 with the sigma
arithmetic in float32; a seed's noise is the same on every device; studies run cells on
a device and dtype and record both in their rows; the trainer trains in mixed precision
with float32 weights; a device this machine lacks is a clear error.

The CUDA checks skip on a machine without CUDA.
"""

from types import SimpleNamespace

import pytest
import torch

import lab
from experiments import __main__ as cli
from experiments.studies import smoke
from lab import devices, study
from lab.study.placement import place_sample, placed
from lab.train import TrainConfig, Trainer
from lab.train import main as train_main

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


class SigmaRecorder(lab.Denoiser):
    """``inner`` as it is, noting the dtype of every sigma the sampling loop hands it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.dtypes = inner, set()

    def forward(self, x, sigma, cond=lab.denoiser.NO_COND):
        self.dtypes.add(sigma.dtype)
        return self.inner(x, sigma)


def gaussian_float32():
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]])
    return lab.models.Gaussian(torch.tensor([1.0, -0.5]), cov)


@pytest.mark.parametrize("rule", ["heun", "dpmpp_2m"])
def test_bfloat16_sampling_is_close_to_float32_with_sigmas_in_float32(rule):
    model = SigmaRecorder(gaussian_float32())
    sigmas = lab.schedules.karras(12, sigma_min=0.002, sigma_max=80.0)
    x = lab.noise((256, 2), seed=0) * sigmas[0]
    full = lab.sample(model, x, sigmas, rule, record="final")
    half = lab.sample(model, x.to(torch.bfloat16), sigmas, rule, record="final")
    assert half.x.dtype == torch.bfloat16 and model.dtypes == {torch.float32}
    diff = (half.x.float() - full.x).abs().max() / full.x.abs().max()
    assert 0 < diff < 0.03, diff  # bfloat16 rounding (8-bit mantissa) over 12 steps, no more


def test_noise_is_drawn_on_the_cpu_then_cast():
    """Under a bfloat16 run a cell starts from the float32 noise rounded to bfloat16 (the
    same draws as a float32 run), not from a different bfloat16 stream."""
    x = study.start_noise(gaussian_float32(), 64, 3, 80.0)
    with placed(study.Placement("cpu", "bfloat16")) as where:
        moved = place_sample(x)
    assert moved.dtype == torch.bfloat16 and where.sampled == "bfloat16"
    assert torch.equal(moved, x.to(torch.bfloat16))


@CUDA
def test_a_seed_gives_the_same_noise_on_cuda():
    cpu = lab.noise((8, 1, 28, 28), seed=5)
    gpu = lab.noise((8, 1, 28, 28), seed=5, device="cuda")
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


@CUDA
def test_a_study_runs_on_cuda_and_records_it(tmp_path):
    local = study.run(smoke, tmp_path / "cpu", fast=True, progress=False)
    gpu = study.run(smoke, tmp_path / "cuda", fast=True, progress=False,
                    placement=study.Placement("cuda"))
    for a, b in zip(local, gpu):
        assert (b["device"], b["dtype"]) == ("cuda", "float64")
        assert b["metrics"]["error_rms"] == pytest.approx(a["metrics"]["error_rms"], rel=1e-6)


def test_rows_record_device_and_dtype_and_a_folder_keeps_one_dtype(tmp_path):
    own = study.run(smoke, tmp_path / "own", fast=True, progress=False)
    half = study.run(smoke, tmp_path / "half", fast=True, progress=False,
                     placement=study.Placement("cpu", "bfloat16"))
    assert {(r["device"], r["dtype"]) for r in own} == {("cpu", "float64")}
    assert {(r["device"], r["dtype"]) for r in half} == {("cpu", "bfloat16")}
    for a, b in zip(own, half):
        assert a["key"] == b["key"]  # the placement is no part of a cell
        assert b["metrics"]["sw"] == pytest.approx(a["metrics"]["sw"], rel=0.1, abs=0.01)
    assert "Sampled on cpu bfloat16." in (tmp_path / "half" / "summary.md").read_text()
    with pytest.raises(study.StudyError, match="rows of two precisions would mix"):
        study.run(smoke, tmp_path / "own", fast=True, progress=False,
                  placement=study.Placement("cpu", "float16"))


def test_a_study_that_samples_its_own_way_refuses_a_placement(tmp_path):
    own_way = SimpleNamespace(NAME="own-way", cells=lambda fast: study.grid(i=[0]),
                              run_cell=lambda cell: {"value": 1.0},
                              render=lambda rows, out: None)
    rows = study.run(own_way, tmp_path / "a", progress=False)
    assert (rows[0]["device"], rows[0]["dtype"]) == ("cpu", None)  # nothing was sampled
    with pytest.raises(study.StudyError, match="without lab.study.sample_cell"):
        study.run(own_way, tmp_path / "b", progress=False,
                  placement=study.Placement("cpu", "bfloat16"))


def test_rows_from_before_devices_were_recorded_still_resume(tmp_path):
    """A run started before this change (rows without device and dtype, a manifest
    without dtype) continues with the new code."""
    out = tmp_path / "old"
    study.run(smoke, out, fast=True, progress=False, limit=4)
    old = [{k: v for k, v in r.items() if k not in ("device", "dtype")}
           for r in study.read_rows(out / study.ROWS)]
    study.write_rows(out / study.ROWS, old)
    rows = study.run(smoke, out, fast=True, progress=False)
    assert len(study.read_rows(out / study.ROWS)) == len(rows) == len(smoke.cells(True))
    assert sum("device" in r for r in rows) == len(rows) - 4


def test_device_and_dtype_names_are_checked():
    assert devices.device("cpu") == torch.device("cpu")
    assert devices.dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown device 'gpu'; use one of cpu, cuda, mps"):
        devices.device("gpu")
    with pytest.raises(ValueError, match="unknown dtype 'float64'; use one of float32"):
        devices.dtype("float64")


@NO_CUDA
def test_a_missing_gpu_is_a_clear_error_naming_the_way_out(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="no CUDA GPU here.*use --device cpu"):
        devices.device("cuda")
    assert cli.main(["smoke", "--fast", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "use --device cpu" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no CUDA GPU here"):
        train_main(["experiments/configs/fashion-edm.json", "--device", "cuda"])


def moons(**kw):
    model = {"kind": "edm", "network": "mlp", "sigma_data": 1.0, "sample_shape": [2],
             "network_config": {"dim": 2, "hidden": 32, "depth": 2}}
    return TrainConfig(**{**dict(name="moons", model=model, data="two_moons", data_size=2000,
                                 steps=8, batch_size=64, warmup=2, checkpoint_every=8,
                                 seed=3), **kw})


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_training_keeps_float32_weights(tmp_path, dtype):
    full = Trainer(moons(), tmp_path / "full")
    full.run(progress=False)
    mixed = Trainer(moons(), tmp_path / dtype, dtype=dtype)
    mixed.run(progress=False)
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    assert all(p.dtype == torch.float32 for p in mixed.ema.parameters())
    # autocast ran the network in low precision: close to the float32 losses, not equal
    assert mixed.losses != full.losses
    assert mixed.losses == pytest.approx(full.losses, rel=0.05)
    resumed = Trainer(moons(), tmp_path / dtype, dtype=dtype)
    assert resumed.resume() and resumed.scaler.is_enabled() == (dtype == "float16")
