"""Run a package's command line from a file in ``experiments/`` (``python experiments/cl.py``).

Python puts a script's folder first on the import path, so ``experiments/cl.py`` and
``experiments/figures.py`` would be imported in place of the packages ``cl`` and ``figures``
they share a name with. :func:`run_package_cli` imports those packages past the script's folder
(the same finders, the same order, that folder left out) without changing the import path, then
runs the package's ``run``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

# the top-level packages of this project
PACKAGES = ("norga", "moe_theory", "cl", "figures")


def _resolved(entry: str) -> Path | None:
    try:
        return Path(entry or ".").resolve()
    except (OSError, RuntimeError):
        return None


def _find_spec(name: str, folder: Path) -> ModuleSpec | None:
    """Where ``import name`` would look if ``folder`` were not on the import path."""
    search = [entry for entry in sys.path if _resolved(entry) != folder]
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(name, search) if finder is PathFinder else find_spec(name, None)
        if spec is not None:
            return spec
    return None


def import_past(folder: Path, names: Iterable[str] = PACKAGES,
                needed: Iterable[str] | None = None) -> None:
    """Import each package of ``names`` that a module in ``folder`` would shadow.

    Parameters
    ----------
    folder
        The folder of the running script (first on the import path).
    names
        Top-level package names; those without a same-named ``.py`` file or folder in
        ``folder``, or already imported, are left to the ordinary import.
    needed
        The packages the command itself uses (default: all of ``names``). A package outside
        it whose own dependencies are not installed (its extra is missing, e.g. ``cl`` in a
        theory-only install) is skipped instead of stopping the command.

    Raises
    ------
    ModuleNotFoundError
        If a shadowed package is not installed anywhere else, or a needed one lacks a
        dependency.
    """
    needed = set(names if needed is None else needed)
    folder = folder.resolve()
    for name in names:
        if name in sys.modules or not any(
                (folder / candidate).exists() for candidate in (f"{name}.py", name)):
            continue
        spec = _find_spec(name, folder)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"the package {name!r} is not installed; run "
                                      "`pip install -e .` in the repository", name=name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except ModuleNotFoundError as err:
            del sys.modules[name]
            own = err.name is not None and (err.name == name or err.name.startswith(name + "."))
            if name in needed or own:
                raise
        except BaseException:
            del sys.modules[name]
            raise


def run_package_cli(module: str, script: str) -> int:
    """Run ``module.run(prog=<script's file name>)`` from the script file ``script``.

    Parameters
    ----------
    module
        The command's module, e.g. ``"cl.cli"``; it must have ``run(prog)``.
    script
        ``__file__`` of the calling script.

    Returns
    -------
    int
        The command's exit status.
    """
    path = Path(script)
    # the command's package and the shared helpers must import; another half only if it can
    import_past(path.resolve().parent, needed={module.split(".")[0], "norga"})
    return importlib.import_module(module).run(prog=path.name)
