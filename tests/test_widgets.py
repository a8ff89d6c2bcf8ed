"""The notebook panels (lab.widgets) driven without a browser: set the widgets, press Run
through its callback, check what the panels show against lab.sample for the same seed."""

import ipywidgets as widgets
import pytest
import torch

import lab
from lab import widgets as lw
from lab.widgets import Compare, RulePanel, TrajectoryScrubber

from .conftest import two_d_mixture

N = 32


@pytest.fixture(scope="module")
def mix():
    return two_d_mixture()


def karras(n):
    return lw.default_schedule(two_d_mixture())(n)


def reference(model, rule, steps, seed, shape=(N, 2), dtype=torch.float32):
    sig = karras(steps)
    return lab.sample(model, lab.noise(shape, seed, dtype=dtype) * sig[0], sig, rule, seed=seed)


# ------------------------------------------------------------------ controls from the registry

@pytest.mark.parametrize("name", lab.rules.available())
def test_controls_rebuild_each_rule_at_its_defaults(name):
    controls = lw.rule_controls(name)
    assert set(controls) == {p.name for p in lab.rules.describe(name)}
    rule = lab.rules.get(name, **lw.control_values(controls))
    assert rule.config == lab.rules.get(name).config  # defaults survive the widgets exactly


def test_control_kinds_follow_the_declarations():
    adam = lw.rule_controls("adam")
    assert isinstance(adam["lr_scale"], widgets.FloatSlider)
    assert isinstance(adam["betas"], list) and len(adam["betas"]) == 2
    assert [w.value for w in adam["betas"]] == [0.9, 0.999]
    assert isinstance(adam["eps"], widgets.FloatLogSlider) and adam["eps"].value == 1e-8
    assert isinstance(lw.rule_controls("lms")["order"], widgets.IntSlider)
    churn = lw.rule_controls("churn")
    assert isinstance(churn["rule"], widgets.Dropdown)
    assert set(churn["rule"].options) == set(lab.rules.available("deterministic"))
    # the panel's own dropdown says "rule": the wrapper's inner rule is labelled apart
    assert churn["rule"].description == lw.controls.INNER_RULE_LABEL != "rule"
    assert churn["s_noise"].value == 1.003  # a slider step that keeps the default
    assert isinstance(churn["s_tmax"], widgets.BoundedFloatText)  # [0, 1e6]: typed, not slid
    assert isinstance(lw.rule_controls("annealed_langevin")["step_size"], widgets.FloatLogSlider)
    optim = lw.rule_controls("optim")
    assert isinstance(optim["optimizer"], widgets.Dropdown)
    # the dropdown lists the declared choices: nothing in the widgets knows "optim"
    choice = {p.name: p for p in lab.rules.describe("optim")}["optimizer"]
    assert optim["optimizer"].options == tuple(choice.choices)
    assert "SGD" in optim["optimizer"].options and "Adam" in optim["optimizer"].options
    assert "LBFGS" not in optim["optimizer"].options  # needs a closure: refused by the adapter


def test_a_choice_param_gets_a_dropdown_of_its_choices():
    p = lab.rules.Param("flavour", "b", choices=("a", "b", "c"), doc="which one")
    control = lw.param_control(p)
    assert isinstance(control, widgets.Dropdown)
    assert control.options == ("a", "b", "c") and control.value == "b"
    assert lw.param_control(p, "c").value == "c"


def test_metric_factories_live_once_in_lab_metrics():
    for name in ("exact_error", "sliced_wasserstein_to", "fid_metric", "default_metric"):
        assert getattr(lw, name) is getattr(lab.metrics, name)  # handed on, not copied
    gauss = lab.models.Gaussian(torch.tensor([0.5, 0.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    traj = reference(gauss, "euler", 4, seed=0)
    exact = lab.metrics.exact_solution(gauss, traj.xs[0].double(), float(traj.sigmas[0]), 0.0)
    assert lab.metrics.exact_error(gauss)(traj) == lab.metrics.max_abs_error(traj.x, exact) > 0


def test_widgets_know_no_rule_by_name():
    import inspect

    for module in (lw.controls, lw.panels, lw.scrubber):
        source = inspect.getsource(module)
        assert '"optim"' not in source and "torch_optimizers" not in source, module.__name__


# ------------------------------------------------------------------ RulePanel

def test_rule_panel_run_matches_lab_sample(mix):
    panel = RulePanel(mix, shape=(N, 2), seed=0, rule="euler", steps=4)
    first_image, first_readout = panel.scrubber.image.value, panel.scrubber.readout.value
    assert "step 4/4" in first_readout and first_image

    panel.rule_dropdown.value = "momentum"
    panel.controls["beta"].value = 0.5
    panel.controls["lr_scale"].value = 0.8
    panel.steps.value = 6
    panel.seed.value = 3
    panel.run_button.click()

    rule = lab.rules.get("momentum", beta=0.5, lr_scale=0.8)
    ref = reference(mix, rule, 6, seed=3)
    assert torch.equal(panel.traj.x, ref.x)
    assert panel.traj.nfe == ref.nfe == 6
    assert panel.progress.value == panel.progress.max == 6
    assert panel.progress.bar_style == "success"
    readout = panel.scrubber.readout.value
    assert readout != first_readout and "step 6/6" in readout and "NFE 6" in readout
    assert panel.scrubber.image.value != first_image
    # the image shown is exactly what a scrubber draws from lab.sample's trajectory
    assert panel.scrubber.image.value == TrajectoryScrubber(
        {rule.config_name: ref}, mix).frame(6)


def test_rule_panel_stochastic_rule_follows_the_seed(mix):
    panel = RulePanel(mix, shape=(N, 2), seed=5, rule="ancestral", steps=5)
    panel.controls["eta"].value = 0.5
    panel.controls["rule"].value = "heun"
    first = panel.run()
    ref = reference(mix, lab.rules.ancestral("heun", eta=0.5), 5, seed=5)
    assert torch.equal(first.x, ref.x)
    panel.seed.value = 6
    assert not torch.equal(panel.run().x, first.x)


def test_rule_panel_torch_optim_and_cost(mix):
    panel = RulePanel(mix, shape=(N, 2), rule="optim", steps=5, run_now=False)
    panel.controls["optimizer"].value = "Adam"
    assert "5 model calls" in panel.cost.value
    traj = panel.run()
    adam = lab.rules.get("optim", optimizer="Adam", lr_scale=1.0)
    assert torch.equal(traj.x, reference(mix, adam, 5, seed=0).x)
    panel.rule_dropdown.value = "heun"
    assert set(panel.controls) == set()
    assert "9 model calls" in panel.cost.value  # 2N - 1


def test_rule_panel_shows_errors_instead_of_raising(mix):
    # the torch.optim adapter cannot follow per-sample estimated noise levels
    panel = RulePanel(mix, shape=(N, 2), rule="optim", steps=4, run_now=False,
                      sigma_estimate=lab.noise_level.RMSHeuristic(sd=1.0))
    panel.run_button.click()
    assert panel.progress.bar_style == "danger"
    assert "ValueError" in panel.status.value and "per-sample" in panel.status.value
    assert not panel.run_button.disabled
    with pytest.raises(ValueError):
        panel.run()


def test_rule_panel_sigma_estimate_dropdown():
    blind = lab.load("moons-mlp-blind")
    panel = RulePanel(blind, n=N, rule="euler", steps=4, sigma_estimate=[None, "rms"])
    # a None option would show a blank dropdown: it is offered as "schedule"
    assert panel.sigma_from.options == ("schedule", "rms")
    assert panel.sigma_from.value == "schedule" and panel.sigma_estimate is None
    assert panel.sigma_from.label == "schedule"
    on_schedule = panel.traj
    panel.sigma_from.value = "rms"
    estimated = panel.run()
    assert on_schedule.sigma_hats is None and estimated.sigma_hats is not None
    sig = karras(4)
    ref = lab.sample(blind, lab.noise((N, 2), 0) * sig[0], sig, "euler", seed=0,
                     sigma_estimate="rms")
    assert torch.equal(estimated.x, ref.x)
    panel.sigma_from.value = "schedule"
    assert panel.sigma_from.label == "schedule" and panel.sigma_estimate is None
    assert panel.run().sigma_hats is None


# ------------------------------------------------------------------ TrajectoryScrubber

def test_scrubber_slider_indexes_the_trajectory(mix):
    traj = reference(mix, "heun", 5, seed=1)
    scrub = TrajectoryScrubber(traj, mix)
    assert scrub.slider.max == 5 and scrub.value == 5
    last_image = scrub.image.value
    scrub.slider.value = 2
    assert "step 2/5" in scrub.readout.value
    assert f"sigma {float(traj.sigmas[2]):.4g}" in scrub.readout.value
    assert f"NFE {traj.cumulative_nfe[1]}" in scrub.readout.value
    assert scrub.image.value != last_image
    x, x0, sigma, nfe = scrub.state(traj.rule, 2)
    assert torch.equal(x, traj.xs[2]) and torch.equal(x0, traj.x0s[2])
    assert sigma == float(traj.sigmas[2]) and nfe == traj.cumulative_nfe[1]
    scrub.slider.value = 0
    assert scrub.readout_text().startswith("step 0/5") and "NFE 0" in scrub.readout_text()
    # frames are cached: scrubbing back does not redraw
    drawn = _count_draws(scrub)
    scrub.slider.value = 2
    assert drawn == [] and scrub.image.value == scrub.frame(2)
    scrub.slider.value = 3
    assert drawn == [3]


def _count_draws(scrub) -> list:
    drawn = []
    draw = scrub.figure
    scrub.figure = lambda k=None: drawn.append(k) or draw(k)
    return drawn


def test_scrubber_draws_each_frame_once_back_and_forth(mix):
    traj = reference(mix, "euler", 6, seed=2)
    scrub = TrajectoryScrubber(None, mix)
    drawn = _count_draws(scrub)
    scrub.set_trajectory(traj)
    shown = {}
    for k in [6, 5, 4, 3, 4, 5, 6, 2, 0, 1, 0, 6, 3]:
        scrub.slider.value = k
        assert f"step {k}/6" in scrub.readout.value
        assert scrub.image.value == scrub.frame(k)  # the frame on show is step k's
        shown[k] = scrub.image.value
    assert sorted(drawn) == sorted(set(drawn)) == sorted(shown)  # each at most once
    assert len(set(shown.values())) == len(shown)  # and every step looks different


def _idle(seconds: float, make=None):
    """Run ``make()`` inside a running asyncio loop (as in a kernel), then let the loop
    idle for ``seconds``; returns what ``make`` returned."""
    import asyncio

    async def main():
        out = make() if make else None
        await asyncio.sleep(seconds)
        return out

    return asyncio.run(main())


def test_scrubber_prerenders_while_the_event_loop_is_idle(mix, monkeypatch):
    """In a kernel (a running asyncio loop) the frames are drawn while it idles, nearest
    to the one on show first; afterwards scrubbing draws nothing."""
    drawer = lw.scrubber.IdleDrawer(gap=0.0, quiet=0.0)
    monkeypatch.setattr(lw.scrubber, "IDLE_DRAWER", drawer)
    traj = reference(mix, "heun", 5, seed=1)
    scrub = TrajectoryScrubber(None, mix)
    drawn = _count_draws(scrub)

    def open_it():
        scrub.set_trajectory(traj)
        assert drawn == [5]  # the step on show is drawn at once, the rest later
        return scrub

    _idle(0.5, open_it)
    assert drawn == [5, 4, 3, 2, 1, 0] and drawer.queue == []
    for k in [0, 3, 5, 1]:
        scrub.slider.value = k
        assert scrub.image.value == scrub.frame(k) and f"step {k}/5" in scrub.readout.value
    assert len(drawn) == 6  # nothing drawn twice
    off = TrajectoryScrubber(None, mix, prerender=False)
    _idle(0.2, lambda: off.set_trajectory(traj))
    assert list(off._frames) == [5]
    TrajectoryScrubber(traj, mix)  # outside a running loop (a script) nothing is queued
    assert drawer.queue == []


def test_one_idle_drawer_serves_every_scrubber_in_order(mix, monkeypatch):
    drawer = lw.scrubber.IdleDrawer(gap=0.0, quiet=0.0)
    monkeypatch.setattr(lw.scrubber, "IDLE_DRAWER", drawer)
    order = []

    def logged(name, scrub):
        draw = scrub.figure
        scrub.figure = lambda k=None: order.append((name, k)) or draw(k)
        return scrub

    first, second = (logged(name, TrajectoryScrubber(None, mix)) for name in "ab")

    def open_both():
        first.set_trajectory(reference(mix, "euler", 3, seed=0))
        second.set_trajectory(reference(mix, "euler", 2, seed=0))
        assert drawer.queue == [first, second]  # top down, as a notebook is read

    _idle(0.5, open_both)
    # each shows its last step at once; then the frames of the first, then the second
    assert order == [("a", 3), ("b", 2), ("a", 2), ("a", 1), ("a", 0), ("b", 1), ("b", 0)]

    def rerun_both():  # a panel's new run is what the user looks at: it goes first
        first.set_trajectory(reference(mix, "euler", 1, seed=0))
        second.set_trajectory(reference(mix, "euler", 1, seed=0))
        assert drawer.queue == [second, first]

    _idle(0.0, rerun_both)
    # a slider that just moved holds the drawer off, so the kernel answers it first
    waiting = lw.scrubber.IdleDrawer(gap=0.0, quiet=30.0)
    monkeypatch.setattr(lw.scrubber, "IDLE_DRAWER", waiting)
    third = logged("c", TrajectoryScrubber(None, mix))

    def open_and_slide():
        third.set_trajectory(reference(mix, "euler", 3, seed=0))
        third.slider.value = 1

    _idle(0.3, open_and_slide)
    assert [k for name, k in order if name == "c"] == [3, 1]
    # the scrubber whose slider moved last is drawn first
    assert waiting.queue == [third]

    def slide_an_older_one():
        waiting.add(first)
        assert waiting.queue == [first, third]
        third.slider.value = 2
        assert waiting.queue == [third, first]

    _idle(0.0, slide_an_older_one)


def test_scrubber_in_a_kernel_draws_only_the_last_of_quick_presses(mix, monkeypatch):
    drawer = lw.scrubber.IdleDrawer(gap=30.0, quiet=30.0)  # no drawing in the background
    monkeypatch.setattr(lw.scrubber, "IDLE_DRAWER", drawer)
    scrub = TrajectoryScrubber(reference(mix, "euler", 6, seed=0), mix)
    drawn = _count_draws(scrub)

    def press_three_times():
        for k in (5, 4, 3):
            scrub.slider.value = k
        assert drawn == [] and "step 6/6" in scrub.readout.value  # not yet

    _idle(lw.scrubber.SLIDE_DEBOUNCE + 0.3, press_three_times)
    assert drawn == [3]
    assert "step 3/6" in scrub.readout.value and scrub.image.value == scrub.frame(3)

    def back_to_a_drawn_one():
        scrub.slider.value = 6
        assert "step 6/6" in scrub.readout.value  # drawn already: shown at once

    _idle(0.0, back_to_a_drawn_one)
    assert drawn == [3]


def _titles_inside_the_figure(fig) -> list[str]:
    """The axes titles that stick out of the figure (drawn at its saved size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width = fig.bbox.width
    return [ax.title.get_text() for ax in fig.axes if ax.get_visible() and ax.title.get_text()
            and not (ax.title.get_window_extent(renderer).x0 >= 0
                     and ax.title.get_window_extent(renderer).x1 <= width)]


def test_image_titles_fit_their_panels():
    # notebook 05 showed "nd, regressor 8/8": the left end cut off at the figure's edge
    data = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = lab.models.Empirical(data)
    sig = karras(3)
    run = lab.sample(model, lab.noise((4, 1, 8, 8), 0) * sig[0], sig, "euler")
    runs = {"noise-blind, rms(noise_hat)": run, "blind, regressor": run}
    scrub = TrajectoryScrubber(runs, model, images=4)
    assert _titles_inside_the_figure(scrub.figure(3)) == []
    fig, ax = lab.viz.new_figure(1, 1, panel_size=(2.0, 2.0))
    lab.viz.plot_image_grid(ax, data[:4], title="a rather long title " * 4)
    assert "\n" in ax.title.get_text() and _titles_inside_the_figure(fig) == []


def test_scrubber_several_runs_of_different_lengths(mix):
    runs = {"euler": reference(mix, "euler", 8, seed=0), "heun": reference(mix, "heun", 4, seed=0)}
    scrub = TrajectoryScrubber(runs, mix)
    assert scrub.layout == "overlay" and scrub.steps == 8
    scrub.slider.value = 4
    text = scrub.readout_text()
    assert "step 4/8" in text and "heun (2/4)" in text
    assert scrub.index("heun", 4) == 2 and scrub.index("euler", 4) == 4
    side = TrajectoryScrubber(runs, mix, layout="side")
    assert side.image.value and side.layout == "side"


def test_scrubber_images_and_bad_input():
    data = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = lab.models.Empirical(data)
    sig = karras(4)
    traj = lab.sample(model, lab.noise((6, 1, 8, 8), 0) * sig[0], sig, "euler")
    scrub = TrajectoryScrubber(traj, model, images=4)
    assert scrub.kind == "images" and bytes(scrub.image.value).startswith(b"\x89PNG")
    scrub.slider.value = 1
    assert "step 1/4" in scrub.readout.value
    final_only = lab.sample(model, lab.noise((6, 1, 8, 8), 0) * sig[0], sig, "euler",
                            record="final")
    with pytest.raises(ValueError, match="record='all'"):
        TrajectoryScrubber(final_only)
    with pytest.raises(TypeError):
        TrajectoryScrubber(traj.x)


def test_scrubber_projects_higher_dimensions():
    gauss = lab.models.Gaussian(torch.zeros(4), torch.eye(4))
    traj = reference(gauss, "euler", 3, seed=0, shape=(N, 4))
    assert TrajectoryScrubber(traj, gauss).image.value  # first two coordinates, no density


# ------------------------------------------------------------------ Compare

def test_compare_same_noise_matched_nfe(mix):
    ref_samples = mix.sample(64, seed=9)
    comp = Compare(mix, ["euler", "heun", lab.rules.get("momentum", beta=0.5)], shape=(N, 2),
                   steps=10, match="NFE", reference=ref_samples, seed=2)
    rows = {r["rule"]: r for r in comp.rows}
    assert rows["euler"]["steps"] == 10 and rows["heun"]["steps"] == 5
    assert all(r["nfe"] <= 10 for r in rows.values())
    for label, rule in comp.rules.items():
        ref = reference(mix, rule, rows[label]["steps"], seed=2)
        assert torch.equal(comp.trajectories[label].x, ref.x)
        assert rows[label]["metric"] == pytest.approx(
            lab.metrics.sliced_wasserstein(ref.x, ref_samples, projections=256))
    assert "sliced W2" in comp.table.value and "momentum(beta=0.5)" in comp.table.value
    before = comp.scrubber.image.value
    comp.match.value = "steps"
    comp.amount.value = 3
    comp.run_button.click()
    assert all(r["steps"] == 3 for r in comp.rows)
    assert comp.scrubber.image.value != before and "step 3/3" in comp.scrubber.readout.value


def test_compare_default_metrics():
    gauss = lab.models.Gaussian(torch.tensor([0.5, 0.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    comp = Compare(gauss, ["euler", "dpmpp_2m"], shape=(N, 2), steps=6, dtype=torch.float64)
    assert "exact" in comp.metric_name
    for row in comp.rows:
        traj = comp.trajectories[row["rule"]]
        exact = gauss.solve(traj.xs[0], 80.0, 0.0)
        assert row["metric"] == pytest.approx(lab.metrics.max_abs_error(traj.x, exact))
    name, metric = lw.default_metric(two_d_mixture(), (N, 2))
    assert "sliced" in name and callable(metric)
    assert lw.default_metric(lab.load("moons-mlp"), (N, 2)) == (None, None)  # no reference
    custom = Compare(two_d_mixture(), {"a": "euler", "b": "euler"}, shape=(N, 2), steps=3,
                     metric=lambda t: float(t.x.abs().max()), metric_name="max |x|")
    assert [r["rule"] for r in custom.rows] == ["a", "b"]
    assert custom.rows[0]["metric"] == custom.rows[1]["metric"]
    with pytest.raises(TypeError):
        Compare(two_d_mixture(), ["euler"], shape=(N, 2), metric="fid", run_now=False)


def test_compare_rule_that_does_not_fit(mix):
    # annealed Langevin makes 5 moves per level plus a final denoising call: 6 NFE at least
    comp = Compare(mix, ["euler", "annealed_langevin"], shape=(N, 2), steps=3, match="NFE")
    rows = {r["rule"]: r for r in comp.rows}
    assert rows["annealed_langevin"]["steps"] is None
    assert "does not fit" in rows["annealed_langevin"]["status"]
    assert list(comp.trajectories) == ["euler"]


def test_panels_display_as_widgets(mix):
    panel = RulePanel(mix, shape=(N, 2), steps=2)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert lw.CSS["slider"] in panel.scrubber.slider._dom_classes
    assert lw.CSS["readout"] in panel.scrubber.readout._dom_classes
