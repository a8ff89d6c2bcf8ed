"""Interactive panels for notebooks: ipywidgets over lab.sample, lab.metrics and lab.viz.

    from lab.widgets import Compare, RulePanel, TrajectoryScrubber

    TrajectoryScrubber(traj, model)                     # a step slider over one run
    TrajectoryScrubber({"euler": t1, "heun": t2}, model)  # several runs overlaid
    RulePanel(model, shape=(256, 2))                    # pick a rule and its parameters, Run
    Compare(model, ["euler", "heun", "momentum"], shape=(256, 2))  # same seed, side by side
    GuidancePanel(cm)                                   # classifier-free guidance sliders

A panel shows itself when it is a cell's last expression (or through ``display``). Its
widgets are attributes (``panel.steps``, ``panel.controls["beta"]``, ``panel.run_button``,
``scrubber.slider``, ``scrubber.readout``, ``scrubber.image``), so code and tests drive a
panel without a browser: set values, then ``panel.run()`` or ``panel.run_button.click()``.
Sampling happens once per Run; the step slider only shows frames drawn once each.

Rooms: ``scrubber`` (the step slider), ``controls`` (controls from the rules' declared
parameters), ``panels`` (RulePanel, Compare), ``guidance`` (GuidancePanel, Img2ImgPanel,
LossPanel), ``display`` (the CSS classes in ``CSS``).
The metric factories live in :mod:`lab.metrics` and are handed on here.
"""

from ..metrics import default_metric, exact_error, fid_metric, sliced_wasserstein_to
from .controls import control_values, param_control, rule_controls
from .display import CSS
from .guidance import GuidancePanel, Img2ImgPanel, LossPanel
from .panels import Compare, RulePanel, default_schedule
from .scrubber import TrajectoryScrubber

__all__ = ["TrajectoryScrubber", "RulePanel", "Compare", "param_control", "rule_controls",
           "control_values", "default_schedule", "default_metric", "exact_error",
           "sliced_wasserstein_to", "fid_metric", "CSS", "GuidancePanel", "Img2ImgPanel",
           "LossPanel"]
