"""timm-faithful interfaces of the prompted models (issue 16, point 2): re-wrapping an already
prompted ViT, explicit ``attn_mask`` / ``is_causal``, ``forward_head(pre_logits=True)``."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from cl_helpers import head_qkv
from timm.models.vision_transformer import VisionTransformer

from cl.models.prefix_attention import PrefixAttention
from cl.models.vit import PromptedViT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=3, num_heads=4,
                             num_classes=0, weight_init="jax", **kw).eval()


def _prompted(vit, gate, act="sigmoid", fused=True) -> PromptedViT:
    model = PromptedViT(vit, 5, pool_size=2, prompt_length=3, prompt_layers=[0, 2], gate=gate,
                        activation=act, fused=fused, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.prompt.act_scale.copy_(torch.tensor([2.0, 3.0]).expand_as(model.prompt.act_scale))
    return model.eval()


@pytest.mark.parametrize(("first", "second"), [(("norga", "gelu", False), ("linear", "tanh", True)),
                                               (("linear", "tanh", True), ("norga", "gelu", True)),
                                               (("norga", "tanh", True), ("norga", "gelu", False))])
def test_rewrapping_a_wrapped_vit_equals_a_fresh_build(first, second) -> None:
    vit = _vit()
    pristine = copy.deepcopy(vit)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([0, 1, 1, 0])
    old = _prompted(vit, *first)(x, ids)
    again = _prompted(vit, *second)  # same ViT object, already wrapped with `first`
    fresh = _prompted(pristine, *second)
    with torch.no_grad():
        new, ref = again(x, ids), fresh(x, ids)
    torch.testing.assert_close(new, ref, rtol=0, atol=0)
    assert not torch.allclose(new, old)  # the settings really differ
    for i in (0, 2):
        attn = vit.blocks[i].attn
        assert (attn.gate, attn.activation, attn.fused) == second
        assert attn.qkv is pristine.blocks[i].attn.qkv or torch.equal(
            attn.qkv.weight, pristine.blocks[i].attn.qkv.weight)  # same projections


# ---------------------------------------------------------------- attn_mask / is_causal
B, N, C, H, L = 2, 5, 16, 4, 3
D = C // H


def _attention(gate: str, fused: bool, seed: int = 0):
    from timm.models.vision_transformer import Attention  # timm 0.9 and 1.x

    g = torch.Generator().manual_seed(seed)
    timm_attn = Attention(C, num_heads=H, qkv_bias=True).eval()
    with torch.no_grad():
        for p in timm_attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    module = PrefixAttention.from_timm(timm_attn, gate=gate, activation="tanh", fused=fused)
    x = torch.randn(B, N, C, generator=g)
    prefix = torch.randn(B, 2, L, H, D, generator=g)
    allowed = torch.rand(B, 1, N, N, generator=g) > 0.4
    allowed[..., 0] = True  # every query keeps one token (else a row is all -inf)
    return timm_attn, module, x, prefix, allowed


def _textbook_masked(timm_attn, x, prefix, allowed, gate, alpha=2.0, tau=0.5):
    """Softmax over [gate(prefix logits), token logits masked by `allowed`], by hand."""
    qkv = x.double() @ timm_attn.qkv.weight.double().T + timm_attn.qkv.bias.double()
    out = torch.zeros(B, N, C, dtype=torch.float64)
    for b in range(B):
        heads = []
        for h in range(H):
            q, k, v = head_qkv(qkv[b], h, C, D)
            s_x = (q @ k.T) / math.sqrt(D)
            s_x = s_x.masked_fill(~allowed[b, 0], float("-inf"))
            if prefix is None:
                logits, values = s_x, v
            else:
                pk, pv = prefix[b, 0, :, h].double(), prefix[b, 1, :, h].double()
                s_p = (q @ pk.T) / math.sqrt(D)
                if gate == "norga":
                    s_p = s_p + alpha * torch.tanh(tau * s_p)
                logits, values = torch.cat([s_p, s_x], 1), torch.cat([pv, v], 0)
            heads.append(logits.softmax(dim=1) @ values)
        out[b] = torch.cat(heads, 1) @ timm_attn.proj.weight.double().T + timm_attn.proj.bias
    return out.float()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("gate", ["linear", "norga"])
def test_attn_mask_is_honoured(gate: str, fused: bool) -> None:
    timm_attn, module, x, prefix, allowed = _attention(gate, fused)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        for mask in (allowed, additive):  # boolean and additive float masks
            got = module(x, attn_mask=mask, prefix=prefix, alpha=2.0, tau=0.5)
            torch.testing.assert_close(got, _textbook_masked(timm_attn, x, prefix, allowed, gate),
                                       rtol=1e-4, atol=1e-5)
            plain = module(x, attn_mask=mask)
            torch.testing.assert_close(plain, _textbook_masked(timm_attn, x, None, allowed, gate),
                                       rtol=1e-4, atol=1e-5)
            if "attn_mask" in inspect.signature(timm_attn.forward).parameters:  # timm >= 1.0
                torch.testing.assert_close(plain, timm_attn(x, attn_mask=mask), rtol=1e-5,
                                           atol=1e-6)
        unmasked = module(x, prefix=prefix, alpha=2.0, tau=0.5)
    assert not torch.allclose(unmasked, got)  # the mask mattered


def test_is_causal_is_honoured_without_prefix_and_refused_with_one() -> None:
    timm_attn, module, x, prefix, _ = _attention("norga", True)
    causal = torch.ones(N, N, dtype=torch.bool).tril().expand(B, 1, N, N)
    with torch.no_grad():
        torch.testing.assert_close(module(x, is_causal=True),
                                   _textbook_masked(timm_attn, x, None, causal, "norga"),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="is_causal"):
        module(x, is_causal=True, prefix=prefix)
    with pytest.raises(ValueError, match="not both"):
        module(x, attn_mask=causal, is_causal=True)
    with pytest.raises(TypeError):
        module(x, unknown_option=1)  # no silent **kwargs any more


# ---------------------------------------------------------------- forward_head
def test_forward_head_pre_logits_matches_timm() -> None:
    vit = _vit(fc_norm=True, global_pool="token")  # MoCo-style: fc_norm after pooling
    model = _prompted(vit, "norga")
    with torch.no_grad():
        model.fc_norm.weight.normal_(generator=torch.Generator().manual_seed(3))
        model.fc_norm.bias.normal_(generator=torch.Generator().manual_seed(4))
        reference = copy.deepcopy(vit)
        reference.fc_norm.load_state_dict(model.fc_norm.state_dict())
        reference.head = copy.deepcopy(model.head)
        tokens = model.forward_features(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True),
                                   reference.forward_head(tokens, pre_logits=True))
        torch.testing.assert_close(model.forward_head(tokens), reference.forward_head(tokens))
        # the Gaussian statistics keep using the feature before fc_norm
        torch.testing.assert_close(model.pre_logits(tokens), tokens[:, 0])
