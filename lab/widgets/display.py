"""What every panel shares: the CSS classes its parts carry, the label width, and showing
itself as its ``widget`` (a panel is a cell's last expression, or goes to ``display``)."""

from __future__ import annotations

#: CSS classes on the panels' widgets, for browser tests and custom styling.
CSS = {"scrubber": "lab-scrubber", "slider": "lab-scrubber-slider",
       "readout": "lab-scrubber-readout", "image": "lab-scrubber-image",
       "panel": "lab-rule-panel", "compare": "lab-compare", "sigma_from": "lab-sigma-from"}

#: Control labels get one width, so sliders line up.
STYLE = {"description_width": "90px"}


class Displayed:
    """A panel that shows itself as its ``self.widget``."""

    widget: object

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
