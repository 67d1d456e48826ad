"""Fixtures shared by the continual-learning tests.

Nothing here is ``autouse``: a test module opts in by name, e.g.
``pytestmark = pytest.mark.usefixtures("one_torch_thread")``, so the other test modules
(theory, data, figures) are unaffected.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run faster on one thread; restore the setting for other test modules."""
    import torch  # here, not at the top: modules that do not ask for this need not load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
