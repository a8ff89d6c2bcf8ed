"""The benchmark runs and reports ratios (its figures are not asserted: timing is noisy)."""

import json

from experiments import bench


def test_bench_prints_and_writes_ratios(tmp_path, capsys):
    result = bench.main(["--steps", "4", "--batch", "4", "--repeats", "1", "--no-model",
                         "--out", str(tmp_path)])
    assert [r["rule"] for r in result["loop"]] == list(bench.RULES)
    for r in result["loop"]:
        assert r["lab_calls"] == r["diffusers_calls"] and r["ratio"] > 0
    out = capsys.readouterr().out
    assert all(f"{r['ratio']:.2f}" in out for r in result["loop"])
    assert json.loads((tmp_path / "bench.json").read_text())["loop"] == result["loop"]


def test_model_share_counts_the_time_inside_model_calls():
    share = bench.model_share(steps=3, batch=2)
    assert share["nfe"] == 5 and 0.5 < share["model_share"] <= 1.0
