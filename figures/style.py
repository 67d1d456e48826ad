"""One consistent look for every figure of the project.

The look lives in ``figures/norga.mplstyle`` (a plain matplotlib style file) and is applied
through :func:`figure_style`, a context manager around ``matplotlib.rc_context``, so importing
this module changes no global state: not the rc parameters, not the backend (``MPLBACKEND`` is
respected; every figure is a bare :class:`~matplotlib.figure.Figure` written to a file, so no
window opens whatever the backend). Colours are fixed per gate and per method (Okabe-Ito,
colour-blind safe), each method also has its own marker so curves stay apart in greyscale, and
NoRGa is the same vermillion in a convergence plot and in an accuracy plot, while linear gating
and its CL counterpart HiDe-Prompt share the same blue.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import matplotlib
from matplotlib.figure import Figure

from norga.io import atomic_write_with

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

#: Colour per CL method (canonical names, see :mod:`figures.names`): the Okabe-Ito palette, one
#: hue family per method (a single blue, a single sky blue), so no two methods differ only in the
#: shade of one hue.
METHOD_COLORS: dict[str, str] = {
    "norga": "#D55E00",  # vermillion
    "hide": "#0072B2",  # blue
    "l2p": "#009E73",  # bluish green
    "dualprompt": "#CC79A7",  # reddish purple
    "sprompt": "#E69F00",  # orange
    "coda-prompt": "#000000",  # black
    "smope": "#56B4E9",  # sky blue
    "ovor": "#888888",  # grey
    "vq-prompt": "#B8A200",  # dark yellow (Okabe-Ito yellow, darkened to show on white)
}
#: Marker per CL method: curves stay apart in greyscale and for every colour vision.
METHOD_MARKERS: dict[str, str] = {
    "norga": "s",
    "hide": "o",
    "l2p": "^",
    "dualprompt": "v",
    "sprompt": "D",
    "coda-prompt": "P",
    "smope": "X",
    "ovor": "<",
    "vq-prompt": ">",
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


def method_marker(method: str) -> str:
    """Marker of a CL method by canonical name (``"o"`` when unknown)."""
    return METHOD_MARKERS.get(method, "o")


def method_label(method: str) -> str:
    """Display name of a CL method (the canonical name itself when unknown)."""
    return METHOD_LABELS.get(method, method)


def gate_label(gate: str, activation: str | None = None) -> str:
    """Display name of a gate, e.g. ``"NoRGa (tanh)"``; the activation is omitted for linear."""
    base = GATE_LABELS.get(gate, gate)
    if activation and activation != "none" and gate != "linear":
        return f"{base} ({activation})"
    return base


#: The style file of the house look (shipped with the package).
STYLE_FILE = Path(__file__).with_name("norga.mplstyle")


def style_rc() -> dict[str, object]:
    """The rc parameters of the house style, read from :data:`STYLE_FILE`.

    Returns
    -------
    dict
        Parameters suitable for :func:`matplotlib.rc_context`.
    """
    return dict(matplotlib.rc_params_from_file(STYLE_FILE, use_default_template=False))


@contextmanager
def figure_style() -> Iterator[None]:
    """Context manager applying the house style to figures created inside it."""
    with matplotlib.rc_context(style_rc()):
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
            with matplotlib.rc_context(style_rc()):
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
