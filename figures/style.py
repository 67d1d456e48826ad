"""One consistent look for every figure of the project.

The look is applied through :func:`figure_style`, a context manager around
``matplotlib.rc_context``, so importing this module changes no global state. Colours are
fixed per gate and per method (Okabe-Ito, colour-blind safe) so that NoRGa is the same
vermillion in a convergence plot and in an accuracy plot, and linear gating and its CL
counterpart HiDe-Prompt share the same blue.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # figures are written to files only; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from norga.io import atomic_write_with  # noqa: E402

logger = logging.getLogger(__name__)

#: Figure widths in inches for one- and two-column paper layouts.
ONE_COLUMN_WIDTH = 3.3
TWO_COLUMN_WIDTH = 6.8

Width = Literal["one", "two"]

#: Colour per gate. Linear gating (HiDe-Prompt's prefix score) is blue, NoRGa vermillion.
GATE_COLORS: dict[str, str] = {"linear": "#0072B2", "norga": "#D55E00"}
GATE_LABELS: dict[str, str] = {"linear": "Linear", "norga": "NoRGa"}
#: Marker per gate, so that figures stay readable in greyscale.
GATE_MARKERS: dict[str, str] = {"linear": "o", "norga": "s"}

#: Colour per CL method (canonical names, see :mod:`figures.names`).
METHOD_COLORS: dict[str, str] = {
    "norga": "#D55E00",
    "hide": "#0072B2",
    "l2p": "#009E73",
    "dualprompt": "#CC79A7",
    "sprompt": "#E69F00",
    "coda-prompt": "#56B4E9",
    "smope": "#332288",
    "ovor": "#888888",
    "vq-prompt": "#44AA99",
}
METHOD_LABELS: dict[str, str] = {
    "norga": "NoRGa",
    "hide": "HiDe-Prompt",
    "l2p": "L2P",
    "dualprompt": "DualPrompt",
    "sprompt": "S-Prompt",
    "coda-prompt": "CODA-Prompt",
    "smope": "SMoPE",
    "ovor": "OVOR",
    "vq-prompt": "VQ-Prompt",
}
#: Colour per NoRGa activation (ablation figure): three shades around NoRGa's vermillion.
ACTIVATION_COLORS: dict[str, str] = {"tanh": "#D55E00", "sigmoid": "#F08A4B", "gelu": "#A33B00"}

#: Grey used for reference lines (rates predicted by theory).
REFERENCE_GREY = "0.45"

# Spare colours for names not listed above, assigned deterministically by name.
_SPARE = ("#117733", "#882255", "#999933", "#AA4499", "#661100", "#6699CC")


def _spare_color(name: str) -> str:
    # A stable hash (not Python's salted hash) keeps colours identical across runs.
    return _SPARE[sum(name.encode()) % len(_SPARE)]


def gate_color(gate: str) -> str:
    """Colour of a gate (``linear`` or ``norga``); unknown names get a stable spare colour."""
    return GATE_COLORS.get(gate, _spare_color(gate))


def method_color(method: str) -> str:
    """Colour of a CL method by canonical name; unknown names get a stable spare colour."""
    return METHOD_COLORS.get(method, _spare_color(method))


def method_label(method: str) -> str:
    """Display name of a CL method (the canonical name itself when unknown)."""
    return METHOD_LABELS.get(method, method)


def gate_label(gate: str, activation: str | None = None) -> str:
    """Display name of a gate, e.g. ``"NoRGa (tanh)"``; the activation is omitted for linear."""
    base = GATE_LABELS.get(gate, gate)
    if activation and activation != "none" and gate != "linear":
        return f"{base} ({activation})"
    return base


def style_rc() -> dict[str, object]:
    """The rc parameters of the house style (seaborn ``whitegrid`` + ``paper`` context, serif).

    Returns
    -------
    dict
        Parameters suitable for :func:`matplotlib.rc_context`.
    """
    rc: dict[str, object] = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("paper", font_scale=1.0))
    rc.update(
        {
            # No LaTeX on the machines: STIX gives a Times-like text face and matching mathtext.
            "font.family": "serif",
            "font.serif": ["STIXGeneral", "DejaVu Serif", "serif"],
            "mathtext.fontset": "stix",
            "font.size": 8,
            "axes.labelsize": 8,
            "axes.titlesize": 8.5,
            "legend.fontsize": 6.5,
            "legend.title_fontsize": 7,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "axes.edgecolor": "0.3",
            "axes.linewidth": 0.6,
            "grid.linewidth": 0.4,
            "grid.color": "0.88",
            "lines.linewidth": 1.3,
            "lines.markersize": 3.5,
            "xtick.bottom": True,
            "ytick.left": True,
            "xtick.major.size": 2.5,
            "ytick.major.size": 2.5,
            "xtick.minor.size": 1.5,
            "ytick.minor.size": 1.5,
            "legend.frameon": True,
            "legend.framealpha": 0.9,
            "legend.edgecolor": "0.8",
            "figure.dpi": 100,
            "savefig.dpi": 300,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
            # Embed TrueType fonts in the PDF (journals reject Type 3 fonts).
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "axes.unicode_minus": True,
            "image.cmap": "viridis",
        }
    )
    return rc


@contextmanager
def figure_style() -> Iterator[None]:
    """Context manager applying the house style to figures created inside it."""
    with plt.rc_context(style_rc()):
        yield


def figure_size(width: Width = "one", aspect: float = 0.75) -> tuple[float, float]:
    """Size ``(w, h)`` in inches for a figure of the given column width.

    Parameters
    ----------
    width:
        ``"one"`` (3.3 in) or ``"two"`` (6.8 in).
    aspect:
        Height divided by width.
    """
    if width not in ("one", "two"):
        raise ValueError(f"width must be 'one' or 'two', got {width!r}")
    w = ONE_COLUMN_WIDTH if width == "one" else TWO_COLUMN_WIDTH
    return (w, w * aspect)


def save_figure(
    fig: Figure,
    stem: str | os.PathLike[str],
    formats: Sequence[str] = ("pdf", "png"),
    dpi: int = 300,
) -> list[Path]:
    """Write ``fig`` as vector PDF and 300-dpi PNG next to each other, atomically.

    Each file is rendered into a temporary file in the target directory and then renamed, so
    a reader never sees a half-written figure.

    Parameters
    ----------
    fig:
        The figure to write.
    stem:
        Path without suffix, e.g. ``out/convergence_exact``; parent folders are created.
    formats:
        File formats (matplotlib names), by default PDF and PNG.
    dpi:
        Resolution of raster formats (300 for papers; lower for README thumbnails).

    Returns
    -------
    list of Path
        The files written, in the order of ``formats``.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        def render(tmp: str, fmt: str = fmt) -> None:
            with plt.rc_context(style_rc()):
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_metadata(fmt))

        atomic_write_with(target, render)  # mode as the umask allows, like every result file
        written.append(target)
        logger.info("wrote %s", target)
    return written


def _metadata(fmt: str) -> dict[str, str | None] | None:
    # Drop the creation date from PDFs so that re-rendering unchanged data gives identical bytes.
    if fmt == "pdf":
        return {"CreationDate": None}
    return None
