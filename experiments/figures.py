#!/usr/bin/env python
"""``python experiments/figures.py``: the installed command ``norga-figures``
(code in figures.cli; see --help).

A thin file kept so that the documented ``python experiments/figures.py ...`` commands work; the
packages are imported past this folder, whose cl.py and figures.py share their names with
packages (norga.script; the import path is left as it is).
"""

import sys

from norga.script import run_package_cli

if __name__ == "__main__":
    sys.exit(run_package_cli("figures.cli", __file__))
