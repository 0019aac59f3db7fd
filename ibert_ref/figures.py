"""Figures for the teaching notebooks: matplotlib on its headless Agg backend, shown as PNG.

The notebooks draw with ``plt = pyplot()`` and show each figure with :func:`show_fig`, so they
render the same in Jupyter and in a headless ``jupyter nbconvert --execute`` run. Needs the
``notebooks`` extra (matplotlib, IPython); nothing else in ``ibert_ref`` imports this module.
"""

from __future__ import annotations

import io


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (figures render to images, no display needed)."""
    import matplotlib  # noqa: PLC0415 - the notebooks extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def show_fig(fig, dpi: int = 80) -> None:
    """Lay out ``fig``, render it with Agg, display it as a PNG in the notebook, and close it."""
    from IPython.display import Image, display  # noqa: PLC0415 - the notebooks extra

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    display(Image(buf.getvalue()))
