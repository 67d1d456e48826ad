"""Small utilities shared by :mod:`moe_theory`, :mod:`cl` and :mod:`figures`.

This package imports none of them (they must not import each other): atomic, checksummed file
writing (:mod:`norga.io`), the run-directory lock (:mod:`norga.runlock`), clean handling of
Ctrl-C / SIGTERM in the command-line tools (:mod:`norga.signals`), and the one check of a value
against its allowed set (:mod:`norga.choices`).
"""

#: The package version: the one place it is written (pyproject.toml reads it from here).
__version__ = "0.1.0"
