#!/usr/bin/env python
"""``python experiments/cl.py``: the installed command ``norga-cl``
(code in cl.cli; see --help).

A thin file kept so that the documented ``python experiments/cl.py ...`` commands work; the
packages are imported past this folder, whose cl.py and figures.py share their names with
packages (norga.script; the import path is left as it is).
"""

import sys

from norga.script import run_package_cli

if __name__ == "__main__":
    sys.exit(run_package_cli("cl.cli", __file__))
