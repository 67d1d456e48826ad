"""A clear message when a half of the toolkit is imported without its optional dependencies.

``pip install norga`` installs only what every half shares; the theory simulator, the CL
pipeline and the figures each come with an extra (``norga[theory]``, ``norga[cl]``,
``norga[figures]``). Each package calls :func:`require_extra` on import, so a missing extra is
named with the command that installs it instead of a bare ``No module named ...``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The top-level modules of ``modules`` that cannot be imported (not installed)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_extra(package: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`ModuleNotFoundError` naming ``extra`` if any of ``modules`` is missing.

    Parameters
    ----------
    package:
        The importing package, e.g. ``"moe_theory"``.
    extra:
        The extra of pyproject.toml that installs ``modules``, e.g. ``"theory"``.
    modules:
        Top-level import names the package needs.
    """
    missing = missing_modules(modules)
    if missing:
        raise ModuleNotFoundError(
            f"{package} needs {', '.join(missing)}, which the '{extra}' extra installs: "
            f"pip install 'norga[{extra}]' (in a clone: pip install -e '.[{extra}]')",
            name=missing[0])
