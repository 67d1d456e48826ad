"""Prefix attention: reference vs fused vs a textbook formula written here, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch
from cl_helpers import head_qkv, saved_bytes
from timm.models.vision_transformer import Attention  # timm 0.9 and 1.x

from cl.models.gating import prefix_gate
from cl.models.prefix_attention import PrefixAttention, sdpa_backward_node
from cl.models.prompts import PrefixPrompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, N, C, H, L = 3, 6, 16, 4, 5
D = C // H
CASES = [("linear", "tanh"), ("norga", "tanh"), ("norga", "sigmoid"), ("norga", "gelu")]


def _sigma(name: str, x: torch.Tensor) -> torch.Tensor:
    # Written from the definitions, not from torch's activation helpers.
    if name == "tanh":
        return (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x))
    if name == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-x))
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def textbook(x, w_qkv, b_qkv, w_proj, b_proj, prefix, alpha, tau, gate, act):
    """Prefix attention token by token with explicit sums (float64)."""
    out = torch.zeros(B, N, C, dtype=torch.float64)
    qkv = x @ w_qkv.T + b_qkv  # (B, N, 3C)
    for b in range(B):
        heads = []
        for h in range(H):
            q, k, v = head_qkv(qkv[b], h, C, D)
            pk, pv = prefix[b, 0, :, h, :], prefix[b, 1, :, h, :]
            s_p = (q @ pk.T) / math.sqrt(D)
            if gate == "norga":
                s_p = s_p + alpha * _sigma(act, tau * s_p)
            s_x = (q @ k.T) / math.sqrt(D)
            logits = torch.cat([s_p, s_x], dim=1)
            weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            heads.append(weights @ torch.cat([pv, v], dim=0))
        out[b] = torch.cat(heads, dim=1) @ w_proj.T + b_proj
    return out


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    attn = Attention(C, num_heads=H, qkv_bias=True)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(B, N, C, generator=g)
    prefix = torch.randn(B, 2, L, H, D, generator=g)
    alpha = torch.tensor(0.7)
    tau = torch.tensor(1.3)
    return attn, x, prefix, alpha, tau


def _run(module, x, prefix, alpha, tau):
    prefix = prefix.clone().requires_grad_(True)
    alpha = alpha.clone().requires_grad_(True)
    tau = tau.clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)
    out = module(x, prefix=prefix, alpha=alpha, tau=tau)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), prefix.grad, alpha.grad, tau.grad, x.grad


@pytest.mark.parametrize("gate,act", CASES)
def test_reference_fused_textbook_agree(gate: str, act: str) -> None:
    attn, x, prefix, alpha, tau = _setup()
    results = {}
    for fused in (False, True):
        module = PrefixAttention.from_timm(attn, gate=gate, activation=act, fused=fused)
        results[fused] = _run(module, x, prefix, alpha, tau)

    # textbook in float64 with autograd for the gradients
    params = {n: p.detach().double() for n, p in attn.named_parameters()}
    inputs = [t.double().requires_grad_(True) for t in (prefix, alpha, tau, x)]
    ref = textbook(inputs[3], params["qkv.weight"], params["qkv.bias"], params["proj.weight"],
                   params["proj.bias"], inputs[0], inputs[1], inputs[2], gate, act)
    weights = torch.linspace(-1, 1, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
    (ref * weights).sum().backward()
    expected = (ref.detach(), *(t.grad for t in inputs))

    names = ("output", "grad prefix", "grad alpha", "grad tau", "grad x")
    for fused, got in results.items():
        for name, a, b in zip(names, got, expected, strict=True):
            if gate == "linear" and name in ("grad alpha", "grad tau"):
                assert a is None or torch.all(a == 0), f"linear gate must ignore {name}"
                continue
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5,
                                       msg=f"{name} (fused={fused}, {gate}/{act})")
    # and the two float32 implementations against each other
    for name, a, b in zip(names, results[False], results[True], strict=True):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_norga_actually_changes_attention() -> None:
    attn, x, prefix, alpha, tau = _setup(1)
    lin = PrefixAttention.from_timm(attn, gate="linear", activation="tanh", fused=True)
    nor = PrefixAttention.from_timm(attn, gate="norga", activation="tanh", fused=True)
    assert not torch.allclose(lin(x, prefix=prefix), nor(x, prefix=prefix, alpha=alpha, tau=tau))


@pytest.mark.parametrize("fused", [False, True])
def test_no_prefix_matches_timm(fused: bool) -> None:
    attn, x, *_ = _setup(2)
    module = PrefixAttention.from_timm(attn, gate="norga", activation="tanh", fused=fused)
    torch.testing.assert_close(module(x), attn(x), rtol=1e-5, atol=1e-6)


def test_prefix_gate_formula_and_validation() -> None:
    s = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(prefix_gate(s, "linear", "tanh", 2.0, 3.0), s)
    expected = s + 2.0 * torch.tanh(3 * s)
    torch.testing.assert_close(prefix_gate(s, "norga", "tanh", 2.0, 3.0), expected)
    torch.testing.assert_close(prefix_gate(s, "norga", "sigmoid", 0.5, 1.0),
                               s + 0.5 / (1 + torch.exp(-s)))
    gelu = 0.5 * s * (1 + torch.erf(s / math.sqrt(2)))
    torch.testing.assert_close(prefix_gate(s, "norga", "gelu", 1.0, 1.0), s + gelu)
    with pytest.raises(ValueError, match="linear, norga"):
        prefix_gate(s, "cubic", "tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tanh, sigmoid, gelu"):
        prefix_gate(s, "norga", "relu")  # type: ignore[arg-type]


def test_prompt_gather_pairs_keys_and_values_per_sample() -> None:
    pool = PrefixPrompt(2, 3, L, H, D, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([2, 0, 1, 2])
    pre = pool.gather(ids)  # (layers, B, 2, L, H, D)
    for b, t in enumerate(ids.tolist()):
        assert torch.equal(pre[:, b, 0], pool.prompt[:, 0, t])  # key of its own task
        assert torch.equal(pre[:, b, 1], pool.prompt[:, 1, t])  # value of its own task
    legacy = PrefixPrompt(2, 3, L, H, D, generator=torch.Generator().manual_seed(0),
                          legacy_kv_reshape=True)
    bad = legacy.gather(ids)
    # the published bug: sample 0 gets the *key* prompts of samples 0 and 1 as key and value
    assert torch.equal(bad[:, 0, 1], legacy.prompt[:, 0, 0])
    assert not torch.equal(bad[:, 0, 1], legacy.prompt[:, 1, 2])


def _devices() -> list:
    cuda = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])
    return ["cpu", cuda]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("gate", ["linear", "norga"])
def test_prompted_vit_paths_agree_with_gradients(gate: str, device: str) -> None:
    """The whole prompted ViT: fused and reference give the same logits and gradients."""
    from timm.models.vision_transformer import VisionTransformer

    from cl.models.vit import PromptedViT

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=3, num_heads=4,
                            num_classes=0, weight_init="jax")
    model = PromptedViT(vit, 5, pool_size=3, prompt_length=4, prompt_layers=[0, 2], gate=gate,
                        activation="sigmoid", generator=torch.Generator().manual_seed(1))
    model = model.to(device)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)).to(device)
    ids = torch.tensor([0, 2, 1, 2], device=device)
    grads = {}
    for fused in (False, True):
        model.set_fused(fused)
        model.zero_grad(set_to_none=True)
        logits = model(x, ids)
        (logits * torch.arange(5.0, device=device)).sum().backward()
        grads[fused] = (logits.detach(), model.prompt.prompt.grad.clone(),
                        None if model.prompt.act_scale.grad is None
                        else model.prompt.act_scale.grad.clone())
    for a, b in zip(grads[False], grads[True], strict=True):
        if a is None or b is None:
            assert gate == "linear"
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert grads[True][1].abs().sum() > 0
    if gate == "norga":
        assert grads[True][2].abs().sum() > 0  # alpha and tau receive gradient


# ------------------------------------------------------------------ the fused NoRGa path
# The fused path puts NoRGa's gate(s) - s into extra head dimensions instead of an attn_mask
# (cl/models/prefix_attention.py): checked against the reference path and a bias written out,
# and checked to keep SDPA's fused kernel (less saved for backward than the reference).

def _leaves(seed: int, b: int, h: int, n: int, d: int, length: int):
    """q, k, v ``(b, h, n, d)`` and per-sample prefixes ``(b, h, length, d)``, all leaves."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    p_k, p_v = (torch.randn(b, h, length, d, generator=g) for _ in range(2))
    return [t.requires_grad_(True) for t in (q, k, v, p_k, p_v)]


def _weighted_backward(out: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return list(torch.autograd.grad((out * weights).sum(), tensors))


@pytest.mark.parametrize("length", [1, 3, 8, 11])
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "gelu"])
def test_fused_norga_matches_reference_with_gradients(act: str, length: int) -> None:
    """Output and q/k/v/prefix/alpha/tau gradients of _fused and _reference, in training mode
    (dropout p = 0), per-sample prefixes; D = 8, so D + L is padded for L = 1, 3, 11 and not
    for L = 8."""
    b, h, n, d = 3, 2, 7, 8
    module = PrefixAttention(torch.nn.Linear(h * d, 3 * h * d), torch.nn.Linear(h * d, h * d),
                             h, gate="norga", activation=act).train()
    assert module.attn_drop.p == 0.0
    results = []
    for path in (module._reference, module._fused):
        leaves = _leaves(length, b, h, n, d, length)
        alpha = torch.tensor(0.8, requires_grad=True)
        tau = torch.tensor(1.7, requires_grad=True)
        q, k, v, p_k, p_v = leaves
        if path == module._fused:
            out = path(q, k, v, p_k, p_v, alpha, tau, 0.0)
            assert sdpa_backward_node(out) is not None, "SDPA fell back to its math kernel"
        else:
            out = path(q, k, v, p_k, p_v, alpha, tau)
        assert out.shape == (b, h, n, d)
        results.append([out.detach(), *_weighted_backward(out, [*leaves, alpha, tau])])
    names = ("output", "grad q", "grad k", "grad v", "grad p_k", "grad p_v", "grad alpha",
             "grad tau")
    for name, ref, fused in zip(names, *results, strict=True):
        assert ref.abs().sum() > 0, name
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5,
                                   msg=f"{name} ({act}, L={length})")


@pytest.mark.parametrize("length", [1, 5, 8])
def test_prefix_bias_attention_equals_an_additive_mask(length: int) -> None:
    """An arbitrary bias on the prefix columns: same output and gradients (bias included) as
    the textbook softmax with that bias added; head size 12 (not a multiple of 8)."""
    from cl.models.prefix_attention import prefix_bias_attention

    b, h, n, d = 2, 3, 9, 12
    scale = d**-0.5
    results = []
    for fused in (False, True):
        leaves = _leaves(10 + length, b, h, n, d, length)
        bias = torch.randn(b, h, n, length, generator=torch.Generator().manual_seed(5))
        bias.requires_grad_(True)
        q, k, v, p_k, p_v = leaves
        if fused:
            out = prefix_bias_attention(q, k, v, p_k, p_v, bias, scale=scale)
        else:
            logits = torch.cat([q @ p_k.transpose(-2, -1) * scale + bias,
                                q @ k.transpose(-2, -1) * scale], dim=-1)
            out = logits.softmax(-1) @ torch.cat([p_v, v], dim=2)
        results.append([out.detach(), *_weighted_backward(out, [*leaves, bias])])
    for i, (ref, fused) in enumerate(zip(*results, strict=True)):
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5, msg=f"tensor {i}")


@pytest.mark.parametrize("gate", ["norga", "linear"])
def test_fused_path_saves_less_for_backward_than_reference(gate: str) -> None:
    """In training (everything requires grad) the fused path keeps SDPA's fused kernel and so
    saves fewer bytes for backward than the reference path, which keeps the (B, H, N, L + N)
    attention matrix. An attn_mask that needs a gradient (NoRGa's bias) would send SDPA to its
    math kernel, which saves as much as the reference path: this test would fail then."""
    b, n, c, h, length = 2, 96, 64, 4, 5
    attn = Attention(c, num_heads=h, qkv_bias=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, n, c, generator=g)
    prefix = torch.randn(b, 2, length, h, c // h, generator=g)
    saved = {}
    for fused in (False, True):
        module = PrefixAttention.from_timm(attn, gate=gate, activation="tanh", fused=fused)
        module.train()
        inputs = [t.clone().requires_grad_(True) for t in (x, prefix)]
        alpha, tau = torch.tensor(0.5, requires_grad=True), torch.tensor(2.0, requires_grad=True)
        saved[fused] = saved_bytes(lambda m=module, i=inputs, a=alpha, t=tau: m(
            i[0], prefix=i[1], alpha=a, tau=t), list(attn.parameters()))
    attention_matrix = b * h * n * (n + length) * 4
    assert saved[True] < saved[False], saved
    # and by a clear margin, a good part of the attention matrix
    assert saved[False] - saved[True] > attention_matrix // 4, (saved, attention_matrix)


#: bf16 against float32: relative error (Frobenius norm of the difference over the norm of the
#: float32 value) of the output and the x / prefix gradients (as in test_cl_precision.py; the
#: reference path under autocast is about 8e-3 off here, the fused one 7e-3 to 8e-3), and of
#: the alpha / tau gradients (scalar sums over every prefix logit, where bf16 round-off does not
#: average out: either path misses float32 by up to 3e-2 on them for some seeds).
BF16_REL_TOL = {"tensor": 2e-2, "scalar": 6e-2}


def test_fused_norga_under_cpu_bf16_autocast() -> None:
    """Under CPU bf16 autocast the fused NoRGa path runs SDPA's fused kernel in bf16 and agrees
    with the float32 reference path within :data:`BF16_REL_TOL`."""
    b, n, c, h, length = 2, 20, 32, 4, 5
    attn = Attention(c, num_heads=h, qkv_bias=True)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(b, n, c, generator=g)
    prefix = torch.randn(b, 2, length, h, c // h, generator=g)
    results = {}
    for fused, autocast in ((False, False), (True, True)):
        module = PrefixAttention.from_timm(attn, gate="norga", activation="tanh", fused=fused)
        inputs = [t.clone().requires_grad_(True) for t in (x, prefix)]
        scalars = [torch.tensor(0.9, requires_grad=True), torch.tensor(1.4, requires_grad=True)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(inputs[0], prefix=inputs[1], alpha=scalars[0], tau=scalars[1])
        assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
        if autocast:
            assert sdpa_backward_node(out) is not None, "SDPA fell back to its math kernel"
        grads = _weighted_backward(out.float(), [*inputs, *scalars])
        assert all(gr.dtype == torch.float32 for gr in grads)
        results[autocast] = [out.detach().float(), *grads]
    names = ("output", "grad x", "grad prefix", "grad alpha", "grad tau")
    for name, exact, mixed in zip(names, results[False], results[True], strict=True):
        rel = float((mixed - exact).norm() / exact.norm())
        tol = BF16_REL_TOL["scalar" if exact.ndim == 0 else "tensor"]
        assert 0.0 < rel < tol, (name, rel)  # > 0: bf16 really ran
