"""Plots: 2-D densities and sampling paths, metrics against the number of model calls,
image grids. Helpers draw on a matplotlib ``Axes`` you pass in, so notebooks and
experiments compose them freely::

    fig, axes = lab.viz.new_figure(1, 2)
    lab.viz.plot_density_2d(axes[0], mixture, sigma=0.0)
    lab.viz.plot_paths_2d(axes[0], traj, samples=16)
    lab.viz.plot_metric_vs_nfe(axes[1], rows, "sw")
    lab.viz.save_figure(fig, "results/x/plot.png")     # atomic

Rooms: ``figures`` (new, save, PNG bytes, titles that fit; it picks the Agg backend
without a display), ``space2d``, ``curves``, ``images``; each lists its names in
``__all__`` and all are handed on here.
"""

# importing figures (curves does so first) picks the backend before anything draws
from . import curves, figures, images, space2d
from .curves import *  # noqa: F403
from .figures import *  # noqa: F403
from .images import *  # noqa: F403
from .space2d import *  # noqa: F403

__all__ = [*figures.__all__, *space2d.__all__, *curves.__all__, *images.__all__]
