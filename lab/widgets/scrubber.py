"""A step slider over recorded trajectories: :class:`TrajectoryScrubber`.

Each slider position is drawn once (:class:`~lab.widgets.frames.TrajectoryFrames`), to PNG
bytes shown in an ``ipywidgets.Image``, and kept. Inside a Jupyter kernel the frames not
yet drawn are drawn while the kernel is idle (:class:`IdleDrawer`), so that moving the
slider only swaps cached images and keeps up with the keyboard; elsewhere (scripts,
tests) a frame is drawn when first shown.
"""

from __future__ import annotations

import asyncio
import html
import math
import time

import ipywidgets as widgets

from .. import viz
from .display import CSS, STYLE, Displayed
from .frames import TrajectoryFrames

__all__ = ["TrajectoryScrubber", "IdleDrawer"]


class TrajectoryScrubber(TrajectoryFrames, Displayed):
    """A step slider over a recorded trajectory (``record="all"``), or over several.

    Frames as :class:`~lab.widgets.frames.TrajectoryFrames` draws them (``model``,
    ``density``, ``layout``, ``samples``, ``paths``, ``images``, ``show_x0``, ``view``,
    ``density_sigma``, ``bandwidth``, ``resolution``, ``panel_size`` and ``title`` are its
    options), as PNG at ``dpi``. The readout says ``step k/N``, sigma and the NFE spent to
    reach ``x_k``. ``prerender``: inside a Jupyter kernel, draw the remaining frames
    while the kernel is idle (each slider position is drawn once either way).
    """

    def __init__(self, traj=None, model=None, *, dpi: int = 96,
                 continuous_update: bool = True, prerender: bool = True, **frame_options):
        super().__init__(model, **frame_options)
        self.dpi, self.prerender = dpi, prerender
        self._show_pending, self._shown_before = False, False
        self._frames: dict[int, bytes] = {}

        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="step",
                                        continuous_update=continuous_update,
                                        layout=widgets.Layout(width="460px"), style=STYLE)
        self.play = widgets.Play(value=0, min=0, max=0, interval=500, description="play")
        self.link = widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.readout = widgets.HTML(value="no trajectory yet")
        self.image = widgets.Image(format="png", layout=widgets.Layout(
            max_width="100%", align_self="flex-start"))  # natural size, not stretched
        self.slider.add_class(CSS["slider"])
        self.readout.add_class(CSS["readout"])
        self.image.add_class(CSS["image"])
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), self.readout,
                                    self.image])
        self.widget.add_class(CSS["scrubber"])
        self.slider.observe(self._on_slide, names="value")
        if traj is not None:
            self.set_trajectory(traj)

    # ------------------------------------------------------------------ state
    def set_trajectory(self, traj) -> None:
        """Show new trajectories (clears the frame cache) at their last step."""
        self.load(traj)
        self._frames.clear()
        with self.slider.hold_trait_notifications():
            self.slider.max = self.play.max = self.steps
        self.slider.unobserve(self._on_slide, names="value")
        try:  # a user's slide may wait for more; a new run shows its last step at once
            self.slider.value = self.steps
        finally:
            self.slider.observe(self._on_slide, names="value")
        self.show(self.steps)
        if self.prerender:
            # a notebook's scrubbers are read top down; a panel's new run is looked at now
            IDLE_DRAWER.add(self, first=self._shown_before)
        self._shown_before = True

    @property
    def value(self) -> int:
        """The step on show."""
        return self.slider.value

    # ------------------------------------------------------------------ text
    def readout_text(self, k: int | None = None) -> str:
        """``step k/N · sigma ... · NFE ...`` (per rule when there are several)."""
        k = self.value if k is None else k
        if not self.trajectories:
            return "no trajectory yet"
        parts = [f"step {k}/{self.steps}"]
        for label, t in self.trajectories.items():
            _, _, sigma, nfe = self.state(label, k)
            i = self.index(label, k)
            own = f" ({i}/{t.steps})" if t.steps != self.steps else ""
            if len(self.trajectories) == 1:
                parts += [f"sigma {sigma:.4g}", f"NFE {nfe}"]
            else:
                parts.append(f"{label}{own}: sigma {sigma:.4g}, NFE {nfe}")
        return " · ".join(parts)

    def frame(self, k: int | None = None) -> bytes:
        """PNG bytes of slider position ``k`` (default: the one on show), drawn once."""
        k = self.value if k is None else k
        if k not in self._frames:
            self._frames[k] = viz.figure_png(self.figure(k), dpi=self.dpi)
        return self._frames[k]

    def show(self, k: int | None = None) -> None:
        """Draw step ``k`` into the image widget and update the readout."""
        k = self.value if k is None else k
        self.image.value = self.frame(k)
        self.readout.value = (f"<span style='font-family: monospace'>"
                              f"{html.escape(self.readout_text(k))}</span>")

    def _on_slide(self, change):
        if not self.trajectories:
            return
        IDLE_DRAWER.touched(self)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or change["new"] in self._frames:
            self.show(change["new"])  # drawn already: at once
        elif not self._show_pending:
            # a frame to draw: wait a moment, so a run of key presses draws only its last
            self._show_pending = True
            loop.call_later(SLIDE_DEBOUNCE, self._show_latest)

    def _show_latest(self) -> None:
        self._show_pending = False
        self.show()

    def missing_frame(self) -> int | None:
        """The undrawn step nearest to the one on show, or None when all are drawn."""
        if not self.trajectories:
            return None
        missing = [k for k in range(self.steps + 1) if k not in self._frames]
        return min(missing, key=lambda k: abs(k - self.value)) if missing else None


#: Seconds a slider position whose frame is not drawn yet waits for the next key press.
SLIDE_DEBOUNCE = 0.12


class IdleDrawer:
    """Draws the scrubbers' missing frames while a running event loop (a Jupyter kernel's)
    is idle: one frame at a time, the newest scrubber first, with ``gap`` seconds between
    frames and ``quiet`` seconds after a slider moved, so the kernel answers the slider
    (and runs cells) between two frames. With no running loop it does nothing: frames are
    then drawn when first shown. One drawer serves every scrubber, so several scrubbers
    in a notebook never draw more than one frame per turn of the loop. New scrubbers
    join the back of the queue (a notebook is read top down); a scrubber whose slider
    moved, or that shows a new run, goes to the front."""

    def __init__(self, gap: float = 0.05, quiet: float = 0.5):
        self.gap, self.quiet = gap, quiet
        self.queue: list[TrajectoryScrubber] = []
        self._scheduled = False
        self._last_touch = -math.inf

    def add(self, scrubber: TrajectoryScrubber, first: bool = True) -> None:
        """Queue ``scrubber``'s missing frames, ahead of the scrubbers queued before
        (``first``) or after them."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if scrubber in self.queue:
            self.queue.remove(scrubber)
        self.queue.insert(0 if first else len(self.queue), scrubber)
        if not self._scheduled:
            self._scheduled = True
            loop.call_later(self.gap, self._draw_one)

    def touched(self, scrubber: TrajectoryScrubber) -> None:
        """``scrubber``'s slider moved: the user is waiting on the kernel, so hold off for
        a moment; then draw this scrubber's frames first."""
        self._last_touch = time.monotonic()
        if scrubber.prerender:
            self.add(scrubber)

    def _draw_one(self) -> None:
        self._scheduled = False
        wait = self._last_touch + self.quiet - time.monotonic()
        if wait <= 0:
            while self.queue and self.queue[0].missing_frame() is None:
                self.queue.pop(0)
            if not self.queue:
                return
            scrubber = self.queue[0]
            try:
                scrubber.frame(scrubber.missing_frame())
            except Exception:  # noqa: BLE001 - shown, the frame raises where it is seen
                self.queue.pop(0)
        self._scheduled = True
        asyncio.get_running_loop().call_later(max(wait, self.gap), self._draw_one)


#: The one drawer of this process.
IDLE_DRAWER = IdleDrawer()
