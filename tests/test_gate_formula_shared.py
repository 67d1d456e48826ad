"""The CL attention gate and the theory gate are one formula (docs/architecture.md#halves)."""

import math

import numpy as np
import pytest
import torch

from cl.models.gating import prefix_gate
from moe_theory.gates import Gate


@pytest.mark.parametrize("gate", ["linear", "norga"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("alpha, tau", [(1.0, 1.0), (0.6, 2.5), (-1.3, 0.4)])
def test_cl_prefix_gate_equals_theory_phi(gate, activation, alpha, tau):
    scores = np.linspace(-6.0, 6.0, 97)
    theory = Gate(gate, activation, alpha, tau).phi(scores)
    cl = prefix_gate(torch.tensor(scores, dtype=torch.float64), gate, activation, alpha, tau)
    np.testing.assert_allclose(cl.numpy(), theory, rtol=1e-13, atol=1e-13)
    # hand values at s = 1: linear keeps s; NoRGa adds alpha * sigma(tau)
    sigma = {"tanh": np.tanh(tau), "sigmoid": 1 / (1 + np.exp(-tau)),
             "gelu": tau * 0.5 * (1 + math.erf(tau / np.sqrt(2)))}[activation]
    expected = 1.0 if gate == "linear" else 1.0 + alpha * sigma
    one = prefix_gate(torch.tensor([1.0], dtype=torch.float64), gate, activation, alpha, tau)
    assert one.item() == pytest.approx(expected, rel=1e-14)
