import pytest
import torch

import lab


def test_record_all_and_final(mixture):
    sig = lab.schedules.karras(6, sigma_max=20.0)
    x = lab.noise((5, 2), seed=0, dtype=torch.float64) * sig[0]
    seen = []
    full = lab.sample(mixture, x, sig, "heun", callback=seen.append)
    assert full.xs.shape == (7, 5, 2) and full.x0s.shape == (6, 5, 2)
    assert torch.equal(full.xs[0], x) and full.nfe == 11 and full.steps == 6
    assert [s.index for s in seen] == list(range(6)) and seen[-1].nfe == 11
    assert [s.sigma for s in seen] == sig[:-1].tolist()
    assert len(full.seconds) == 6 and all(t >= 0 for t in full.seconds)
    final = lab.sample(mixture, x, sig, "heun", record="final")
    assert final.xs.shape == (1, 5, 2) and torch.equal(final.x, full.x)
    assert final.cumulative_nfe == full.cumulative_nfe


def test_schedule_ending_above_zero_returns_that_state(gaussian):
    sig = lab.schedules.karras(10, sigma_min=0.5, sigma_max=20.0, append_zero=False)
    x = lab.noise((3, 4), seed=0, dtype=torch.float64) * 20
    out = lab.sample(gaussian, x, sig, "rk4").x
    assert (out - gaussian.solve(x, 20.0, 0.5)).abs().max().item() < 1e-3


def test_save_load_roundtrip(tmp_path, mixture):
    sig = lab.schedules.karras(4, sigma_max=20.0)
    traj = lab.sample(mixture, lab.noise((3, 2), seed=0) * 20, sig, lab.rules.get("momentum",
                                                                                    beta=0.5))
    traj.save(tmp_path / "t.safetensors")
    back = lab.Trajectory.load(tmp_path / "t.safetensors")
    assert torch.equal(back.xs, traj.xs) and torch.equal(back.sigmas, traj.sigmas)
    assert back.nfe == traj.nfe and back.rule == "momentum(beta=0.5)"
    assert back.meta["rule"]["beta"] == 0.5


def test_corrupt_and_foreign_files(tmp_path, mixture):
    sig = lab.schedules.karras(3, sigma_max=20.0)
    path = tmp_path / "t.safetensors"
    lab.sample(mixture, lab.noise((2, 2)) * 20, sig, "euler").save(path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable trajectory"):
        lab.Trajectory.load(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not a tensor file")
    with pytest.raises(ValueError, match="not a readable trajectory"):
        lab.Trajectory.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="not a lab trajectory"):
        lab.Trajectory.load(tmp_path / "weights.safetensors")
    assert not list(tmp_path.glob("*.tmp"))  # atomic save leaves no temp file


def test_sample_at_budget_takes_the_largest_fitting_step_count(mixture):
    x = lab.noise((4, 2), dtype=torch.float64) * 80

    def schedule(n):
        return lab.schedules.karras(n)

    traj = lab.sample_at_budget(mixture, x, "heun", 20, schedule)
    assert traj.nfe == 19 and traj.steps == 10  # 2n - 1 <= 20
    assert lab.sample_at_budget(mixture, x, "annealed_langevin", 3, schedule) is None
    assert lab.sample_at_budget(mixture, x, "euler", 7, schedule).nfe == 7
