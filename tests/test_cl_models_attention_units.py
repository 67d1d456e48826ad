"""The prefix gate and prefix attention piece by piece, against formulas written here: the
activations and the NoRGa gate ``s + alpha sigma(tau s)``, masks and ``is_causal``, dropout,
the timm norms, wrapping, the augmented-head trick of the fused path, and the checks."""

from __future__ import annotations

import math

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch import nn

from cl.models import prefix_attention as pa
from cl.models.gating import (
    ACTIVATIONS,
    GATES,
    activation_fn,
    prefix_gate,
    prefix_gate_residual,
)
from cl.models.prefix_attention import (
    PrefixAttention,
    prefix_bias_attention,
    rewrap_attention,
    sdpa_backward_node,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, N, C, H, L = 2, 5, 16, 4, 3
D = C // H


def _sigma(name, x):
    if name == "tanh":
        return (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1)
    if name == "sigmoid":
        return 1 / (1 + torch.exp(-x))
    return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))


# ------------------------------------------------------------------------------ gating


def test_gate_and_activation_names():
    assert GATES == ("linear", "norga") and ACTIVATIONS == ("tanh", "sigmoid", "gelu")
    s = torch.ones(2)
    with pytest.raises(ValueError, match=r"^gate must be one of linear, norga; got 'relu'$"):
        prefix_gate(s, "relu")
    with pytest.raises(ValueError, match=r"^activation must be one of tanh, sigmoid, gelu; "
                                         r"got 'relu'$"):
        prefix_gate(s, "norga", "relu")
    with pytest.raises(ValueError, match=r"^activation must be one of tanh, sigmoid, gelu; "
                                         r"got 'relu'$"):
        activation_fn("relu", torch.zeros(1))


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "gelu"])
def test_activations_and_the_norga_gate_formula(act):
    s = torch.linspace(-4, 4, 41, dtype=torch.float64)
    torch.testing.assert_close(activation_fn(act, s), _sigma(act, s), rtol=1e-12, atol=1e-12)
    alpha, tau = 0.7, 1.9
    want = s + alpha * _sigma(act, tau * s)
    torch.testing.assert_close(prefix_gate(s, "norga", act, alpha, tau), want, rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(prefix_gate_residual(s, "norga", act, alpha, tau), want - s,
                               rtol=1e-12, atol=1e-12)
    # tensor alpha / tau, with gradients
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
    prefix_gate(s, "norga", act, a, t).sum().backward()
    torch.testing.assert_close(a.grad, _sigma(act, tau * s).sum(), rtol=1e-10, atol=1e-10)
    assert t.grad.abs() > 0


def test_gate_defaults_and_linear_gate():
    s = torch.linspace(-2, 2, 9, dtype=torch.float64)
    torch.testing.assert_close(prefix_gate(s, "norga"), s + torch.tanh(s))
    assert prefix_gate(s, "linear", "gelu", 5.0, 5.0) is s
    assert prefix_gate_residual(s, "linear", "tanh", 1.0, 1.0) is None
    with pytest.raises(ValueError, match=r"^gate must be one of linear, norga; got 'x'$"):
        prefix_gate_residual(s, "x", "tanh", 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^activation must be one of tanh, sigmoid, gelu; "
                                         r"got 'x'$"):
        prefix_gate_residual(s, "norga", "x", 1.0, 1.0)


def test_gelu_is_the_exact_erf_form():
    x = torch.tensor([1.5], dtype=torch.float64)
    exact = 1.5 * 0.5 * (1 + math.erf(1.5 / math.sqrt(2)))
    tanh_approx = 0.5 * 1.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1.5 + 0.044715 * 1.5**3)))
    assert activation_fn("gelu", x).item() == pytest.approx(exact, abs=1e-15)
    assert abs(exact - tanh_approx) > 1e-5


# ------------------------------------------------------------------------------ attention


def _attention(seed=0, **kw) -> Attention:
    g = torch.Generator().manual_seed(seed)
    attn = Attention(C, num_heads=H, qkv_bias=True, **kw)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return attn.double()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    prefix = torch.randn(B, 2, L, H, D, generator=g, dtype=torch.float64)
    return x, prefix


def slow_attention(attn, x, prefix=None, *, gate="linear", act="tanh", alpha=1.0, tau=1.0,
                   bias=None):
    """Per sample and head: ``softmax([gate(s_P), s_X + bias]) [P_V; v]``, then proj."""
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    out = torch.zeros(B, N, C, dtype=x.dtype)
    for b in range(B):
        heads = []
        for h in range(H):
            q = qkv[b, :, h * D:(h + 1) * D]
            k = qkv[b, :, C + h * D:C + (h + 1) * D]
            v = qkv[b, :, 2 * C + h * D:2 * C + (h + 1) * D]
            s_x = q @ k.T / math.sqrt(D)
            if bias is not None:
                s_x = s_x + bias
            cols, vals = [s_x], [v]
            if prefix is not None:
                s_p = q @ prefix[b, 0, :, h].T / math.sqrt(D)
                if gate == "norga":
                    s_p = s_p + alpha * _sigma(act, tau * s_p)
                cols, vals = [s_p, s_x], [prefix[b, 1, :, h], v]
            logits = torch.cat(cols, dim=1)
            w = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            heads.append((w / w.sum(dim=1, keepdim=True)) @ torch.cat(vals))
        out[b] = torch.cat(heads, dim=1) @ attn.proj.weight.T + attn.proj.bias
    return out


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("gate,act", [("linear", "tanh"), ("norga", "sigmoid"), ("norga", "gelu")])
def test_prefix_attention_equals_the_slow_formula(fused, gate, act):
    attn = _attention()
    x, prefix = _inputs()
    mod = PrefixAttention.from_timm(attn, gate=gate, activation=act, fused=fused)
    assert mod.scale == D**-0.5 and mod.head_dim == D and mod.attn_dim == C
    got = mod(x, prefix=prefix, alpha=0.6, tau=1.7)
    want = slow_attention(attn, x, prefix, gate=gate, act=act, alpha=0.6, tau=1.7)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # default alpha = tau = 1
    torch.testing.assert_close(mod(x, prefix=prefix),
                               slow_attention(attn, x, prefix, gate=gate, act=act), rtol=1e-9,
                               atol=1e-9)
    torch.testing.assert_close(mod(x), slow_attention(attn, x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mod(x), attn(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_masks_and_is_causal_cover_only_the_token_columns(fused):
    attn = _attention()
    x, prefix = _inputs()
    mod = PrefixAttention.from_timm(attn, gate="norga", activation="tanh", fused=fused)
    keep = torch.rand(N, N, generator=torch.Generator().manual_seed(3)) > 0.3
    keep |= torch.eye(N, dtype=torch.bool)
    additive = torch.zeros(N, N, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    float_mask = torch.randn(N, N, generator=torch.Generator().manual_seed(4),
                             dtype=torch.float64)
    causal = torch.zeros(N, N, dtype=torch.float64).masked_fill(
        ~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
    for mask, bias in ((keep, additive), (float_mask, float_mask)):
        torch.testing.assert_close(mod(x, attn_mask=mask), slow_attention(attn, x, bias=bias),
                                   rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            mod(x, attn_mask=mask, prefix=prefix, alpha=0.5, tau=2.0),
            slow_attention(attn, x, prefix, gate="norga", alpha=0.5, tau=2.0, bias=bias),
            rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mod(x, is_causal=True), slow_attention(attn, x, bias=causal),
                               rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"^pass either attn_mask or is_causal=True, not both \(as "
                                         r"in SDPA\)$"):
        mod(x, attn_mask=keep, is_causal=True)
    with pytest.raises(ValueError, match=r"^is_causal=True is not defined for prefix attention "
                                         r"\(prefix columns have no "
                                         r"position\); pass an explicit attn_mask instead$"):
        mod(x, is_causal=True, prefix=prefix)


def test_mask_bias_forms():
    m = torch.tensor([[True, False], [True, True]])
    got = PrefixAttention._mask_bias(m, False, 2, torch.float32, torch.device("cpu"))
    assert got.dtype == torch.float32
    assert got.tolist() == [[0.0, float("-inf")], [0.0, 0.0]]
    causal = PrefixAttention._mask_bias(None, True, 3, torch.float64, torch.device("cpu"))
    assert causal.dtype == torch.float64
    assert torch.isinf(causal).tolist() == [[False, True, True], [False, False, True],
                                            [False, False, False]]
    f = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    out = PrefixAttention._mask_bias(f, False, 2, torch.float32, torch.device("cpu"))
    assert out.dtype == torch.float32 and out.tolist() == [[0.5, -1.0]]


def test_prefix_shape_is_checked():
    mod = PrefixAttention.from_timm(_attention(), gate="linear", activation="tanh", fused=True)
    x, prefix = _inputs()
    with pytest.raises(ValueError, match=r"^prefix has shape \(2, 2, 3, 4, 3\), expected "
                                         r"\(2, 2, 3, 4, 4\)$"):
        mod(x, prefix=prefix[..., :3])
    with pytest.raises(ValueError, match="expected"):
        mod(x, prefix=prefix[:1])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("prefixed", [True, False])
def test_attention_dropout_is_applied_in_training_only(fused, prefixed):
    """With p = 1 every attention weight is dropped in training: the output is the proj
    bias; in eval mode dropout does nothing."""
    attn = _attention()
    attn.attn_drop = nn.Dropout(1.0)
    x, prefix = _inputs()
    mod = PrefixAttention.from_timm(attn, gate="norga", activation="tanh", fused=fused)
    kw = {"prefix": prefix} if prefixed else {}
    mod.eval()
    want = slow_attention(attn, x, prefix if prefixed else None, gate="norga")
    torch.testing.assert_close(mod(x, **kw), want, rtol=1e-9, atol=1e-9)
    mod.train()
    torch.testing.assert_close(mod(x, **kw), attn.proj.bias.expand(B, N, C))


def test_timm_norms_and_output_norm_are_used():
    attn = _attention(qk_norm=True, norm_layer=nn.LayerNorm)
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.bias.uniform_(-1.0, 1.0)
    x, prefix = _inputs()
    for fused in (True, False):
        mod = PrefixAttention.from_timm(attn, gate="linear", activation="tanh", fused=fused)
        assert mod.q_norm is attn.q_norm and mod.k_norm is attn.k_norm
        torch.testing.assert_close(mod(x), attn(x), rtol=1e-10, atol=1e-10)
        # a prefix with zero keys and values equal to v of a duplicated token changes nothing
        # only through the norms: compare against the formula with normed q, k
        qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
        q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
        pk, pv = prefix[:, 0].permute(0, 2, 1, 3), prefix[:, 1].permute(0, 2, 1, 3)
        logits = torch.cat([q @ pk.transpose(-1, -2), q @ k.transpose(-1, -2)], -1) * D**-0.5
        o = logits.softmax(-1) @ torch.cat([pv, v], 2)
        want = attn.proj(o.transpose(1, 2).reshape(B, N, C))
        torch.testing.assert_close(mod(x, prefix=prefix), want, rtol=1e-9, atol=1e-9)
    plain = PrefixAttention(attn.qkv, attn.proj, H)
    assert isinstance(plain.q_norm, nn.Identity) and isinstance(plain.norm, nn.Identity)
    assert plain.attn_drop.p == 0.0 and plain.proj_drop.p == 0.0
    assert (plain.gate, plain.activation, plain.fused) == ("linear", "tanh", True)
    norm = nn.LayerNorm(C).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    with_norm = PrefixAttention(attn.qkv, attn.proj, H, norm=norm, q_norm=attn.q_norm,
                                k_norm=attn.k_norm, fused=False)
    want = attn.proj(norm(o.transpose(1, 2).reshape(B, N, C)))
    torch.testing.assert_close(with_norm(x, prefix=prefix), want, rtol=1e-9, atol=1e-9)


def test_from_timm_checks_and_rewrapping():
    attn = _attention()
    attn.gate = nn.Linear(C, C)
    with pytest.raises(ValueError, match=r"^gated timm attention \(attn.gate\) is not supported "
                                         r"for prefixes$"):
        PrefixAttention.from_timm(attn, gate="linear", activation="tanh", fused=True)

    class NoQkv(nn.Module):
        proj = nn.Linear(C, C)

    with pytest.raises(TypeError, match=r"^NoQkv is not a timm Attention \(no qkv, num_heads\); "
                                        r"prefixes need timm's fused qkv Linear$"):
        PrefixAttention.from_timm(NoQkv(), gate="linear", activation="tanh", fused=True)
    block = nn.Module()
    block.attn = _attention()
    first = rewrap_attention(block, PrefixAttention, gate="norga", activation="gelu",
                             fused=False)
    assert block.attn is first and (first.gate, first.activation, first.fused) == (
        "norga", "gelu", False)
    again = rewrap_attention(block, PrefixAttention)
    assert again is not first and again.qkv is first.qkv and again.proj is first.proj
    assert (again.gate, again.activation, again.fused) == ("linear", "tanh", True)
    # a wrapped attention whose gate is set is re-wrapped, not refused
    third = PrefixAttention.from_timm(first, gate="linear", activation="tanh", fused=True)
    assert third.num_heads == H


@pytest.mark.parametrize("length", [3, 4, 5, 12])
def test_prefix_bias_attention_is_an_additive_prefix_bias(length):
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    pk, pv = (torch.randn(B, H, length, D, generator=g, dtype=torch.float64) for _ in range(2))
    bias = torch.randn(B, H, N, length, generator=g, dtype=torch.float64)
    scale = 0.37
    logits = torch.cat([scale * q @ pk.transpose(-1, -2) + bias, scale * q @ k.transpose(-1, -2)],
                       -1)
    want = logits.softmax(-1) @ torch.cat([pv, v], 2)
    got = prefix_bias_attention(q, k, v, pk, pv, bias, scale=scale)
    assert got.shape == (B, H, N, D)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert pa.HEAD_DIM_MULTIPLE == 8


def test_prefix_bias_attention_gradient_reaches_the_bias_and_dropout_is_passed():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 4, generator=g) for _ in range(3))
    pk, pv = (torch.randn(1, 2, 2, 4, generator=g) for _ in range(2))
    bias = torch.randn(1, 2, 3, 2, generator=g, requires_grad=True)
    prefix_bias_attention(q, k, v, pk, pv, bias[..., :], scale=0.5).sum().backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0
    dropped = prefix_bias_attention(q, k, v, pk, pv, bias.detach(), scale=0.5, dropout_p=1.0)
    assert torch.count_nonzero(dropped) == 0


def test_contiguous_grad_is_the_identity_with_a_contiguous_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    y = pa._ContiguousGrad.apply(x)
    torch.testing.assert_close(y, x)
    seen = {}
    y.register_hook(lambda grad: seen.setdefault("in", grad))
    x.register_hook(lambda grad: seen.setdefault("out", grad))
    (y * torch.arange(12.0).reshape(4, 3).T).sum().backward()
    assert seen["out"].is_contiguous()
    torch.testing.assert_close(x.grad, torch.arange(12.0).reshape(4, 3).T)


def test_sdpa_backward_node_tells_the_fused_kernel_from_the_math_path():
    x = torch.randn(1, 2, 4, 8, requires_grad=True)
    fused = torch.nn.functional.scaled_dot_product_attention(x, x, x)
    assert sdpa_backward_node(fused) is not None
    assert sdpa_backward_node(fused).startswith("ScaledDotProduct")
    math_path = (x @ x.transpose(-1, -2)).softmax(-1) @ x
    assert sdpa_backward_node(math_path) is None
    assert sdpa_backward_node(x.detach()) is None
    # the fused node found behind other nodes, and a graph with a shared node
    deeper = fused * 2 + fused
    assert sdpa_backward_node(deeper) == sdpa_backward_node(fused)


def test_sdpa_backward_node_skips_missing_inputs():
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    kv = torch.randn(1, 2, 4, 8)
    y = torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
    out = y + torch.ones_like(y)  # the constant's slot in next_functions is None
    assert any(fn is None for fn, _ in out.grad_fn.next_functions)
    assert sdpa_backward_node(out) == sdpa_backward_node(y) is not None
    # a node reached twice before the fused one is found
    a = q * 2
    both = (a + a).sum() + y.sum()
    assert sdpa_backward_node(both) is not None


def test_prefix_bias_attention_casts_everything_to_the_dtype_of_k():
    g = torch.Generator().manual_seed(0)
    q, pk, pv = (torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 3, 4, generator=g) for _ in range(2))  # float32
    want = prefix_bias_attention(q.float(), k, v, pk.float(), pv.float(), bias.float(),
                                 scale=0.5)
    got = prefix_bias_attention(q, k, v, pk, pv, bias, scale=0.5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    kb, vb = k.bfloat16(), v.bfloat16()
    low = prefix_bias_attention(q.float(), kb, vb, pk.float(), pv.float(), bias.float(),
                                scale=0.5)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("fused", [True, False])
def test_projection_dropout_and_output_norm_come_from_the_timm_module(fused):
    attn = _attention(scale_norm=True, norm_layer=nn.LayerNorm)
    with torch.no_grad():
        attn.norm.weight.uniform_(0.5, 2.0)
    x, prefix = _inputs()
    mod = PrefixAttention.from_timm(attn, gate="linear", activation="tanh", fused=fused)
    assert mod.norm is attn.norm
    torch.testing.assert_close(mod(x), attn(x), rtol=1e-10, atol=1e-10)
    attn.proj_drop = nn.Dropout(1.0)
    mod = PrefixAttention.from_timm(attn, gate="linear", activation="tanh", fused=fused).train()
    assert mod.proj_drop is attn.proj_drop
    assert torch.count_nonzero(mod(x, prefix=prefix)) == 0
    direct = PrefixAttention(attn.qkv, attn.proj, H, proj_drop=nn.Dropout(1.0)).train()
    assert torch.count_nonzero(direct(x)) == 0


def test_from_timm_accepts_a_module_with_only_qkv_proj_and_heads():
    attn = _attention()

    class Minimal(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj, self.num_heads = attn.qkv, attn.proj, H

    mod = PrefixAttention.from_timm(Minimal(), gate="linear", activation="tanh", fused=True)
    for name in ("q_norm", "k_norm", "norm"):
        assert isinstance(getattr(mod, name), nn.Identity)
    assert mod.attn_drop.p == 0.0 and mod.proj_drop.p == 0.0
    x, _ = _inputs()
    torch.testing.assert_close(mod(x), attn(x), rtol=1e-10, atol=1e-10)
    plain = PrefixAttention(attn.qkv, attn.proj, H)
    assert isinstance(plain.k_norm, nn.Identity) and isinstance(plain.attn_drop, nn.Dropout)
    torch.testing.assert_close(plain(x), attn(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fused", [True, False])
def test_linear_gate_prefix_dropout_in_training(fused):
    attn = _attention()
    attn.attn_drop = nn.Dropout(1.0)
    x, prefix = _inputs()
    mod = PrefixAttention.from_timm(attn, gate="linear", activation="tanh", fused=fused).train()
    torch.testing.assert_close(mod(x, prefix=prefix), attn.proj.bias.expand(B, N, C))
