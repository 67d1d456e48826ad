"""CODA-Prompt and SMoPE model pieces on a tiny timm ViT, against formulas and loops written
here: Gram-Schmidt re-draws, component detaching, the prefixed forward by hand; the expert
attention's dense mode, noise, checks and the SMoPE forward by hand."""

from __future__ import annotations

import math

import pytest
import torch
from cl_helpers import tiny_images, tiny_timm_vit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cl.models.coda import (
    CodaPromptPool,
    CodaViT,
    _project_out,
    component_weights,
    gram_schmidt_rows,
    orthogonality_penalty,
)
from cl.models.frozen_vit import seeded_head
from cl.models.prefix_attention import PrefixAttention
from cl.models.smope_prefix import (
    ExpertPrefixAttention,
    PromptExperts,
    Routing,
    SMoPEViT,
    adaptive_noise,
    proxy_scores,
    select_experts,
)
from cl.models.vit import embed_tokens, finish_block

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, HEADS, DEPTH = 16, 2, 4
D = C // HEADS


def tiny_vit(seed=0, depth=DEPTH, **kw) -> VisionTransformer:
    return tiny_timm_vit(seed, depth, embed_dim=C, num_heads=HEADS, **kw)


images = tiny_images


def by_hand(vit, x, prefixes: dict[int, torch.Tensor]) -> torch.Tensor:
    h = embed_tokens(vit, x)
    for i, block in enumerate(vit.blocks):
        if i in prefixes:
            h = finish_block(block, h, block.attn(block.norm1(h), prefix=prefixes[i]))
        else:
            h = block(h)
    return vit.norm(h)


# ------------------------------------------------------------------------------ CODA


def test_component_weights_and_orthogonality_penalty_small_cases():
    q = torch.tensor([[1.0, 2.0]])
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    att = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    # q * A = [2, 2] -> cos with [1, 0] = 1/sqrt2; [0, 2] with [1, 1] -> 1/sqrt2
    torch.testing.assert_close(component_weights(q, keys, att),
                               torch.full((1, 2), 1 / math.sqrt(2)))
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]).reshape(3, 1, 2)
    gram = [[1, 1, 0], [1, 2, 2], [0, 2, 4]]
    want = sum((gram[i][j] - (i == j)) ** 2 for i in range(3) for j in range(3)) / 9
    assert orthogonality_penalty(v).item() == pytest.approx(want)
    assert orthogonality_penalty(torch.eye(3, dtype=torch.float64)).item() == 0


def test_gram_schmidt_keeps_old_rows_and_makes_new_ones_orthonormal():
    # rows 0-1 orthonormal (an earlier task), rows 2-4 arbitrary
    base = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    base[:2] = gram_schmidt_rows(torch.zeros(2, 2, 3), 0, 2, torch.Generator().manual_seed(9))
    out = gram_schmidt_rows(base, 2, 4, torch.Generator().manual_seed(1))
    assert out.shape == base.shape and out.dtype == base.dtype
    assert torch.equal(out[:2], base[:2]) and torch.equal(out[4], base[4])
    flat = out.reshape(5, -1).double()
    for r in (2, 3):
        assert flat[r].norm().item() == pytest.approx(1.0, abs=1e-6)
        for s in range(r):
            assert abs(float(flat[r] @ flat[s])) < 1e-5
    again = gram_schmidt_rows(base, 2, 4, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, gram_schmidt_rows(base, 2, 4, torch.Generator().manual_seed(2)))
    # more rows than dimensions: the extra rows are unit random vectors
    full = gram_schmidt_rows(torch.zeros(5, 3), 0, 5, torch.Generator().manual_seed(3))
    rows = full.double()
    torch.testing.assert_close(rows[:3] @ rows[:3].T, torch.eye(3, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    # float64 work: one pass of float32 would leave |dot| ~ 1e-7 at C = 512; here exact
    big = gram_schmidt_rows(torch.zeros(8, 512), 0, 8, torch.Generator().manual_seed(4))
    g = big.double() @ big.double().T
    assert (g - torch.eye(8, dtype=torch.float64)).abs().max() < 1e-6
    # the new rows come from the generator's normal draws, projected, normalised
    gen = torch.Generator().manual_seed(5)
    one = gram_schmidt_rows(torch.zeros(1, 4), 0, 1, gen)
    draw = torch.randn(4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(one[0].double(), draw / draw.norm(), atol=1e-7, rtol=0)


def test_project_out_skips_zero_rows_and_removes_each_direction():
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    basis = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                         dtype=torch.float64)
    got = _project_out(v, basis)
    torch.testing.assert_close(got, torch.tensor([0.0, -0.5, 0.5], dtype=torch.float64))
    assert torch.equal(_project_out(v, basis[:1]), v)


def test_coda_pool_parts_and_detaching():
    with pytest.raises(ValueError, match=r"^CODA prompt length must be even \(keys \+ values\), "
                                         r"got 3$"):
        CodaPromptPool(2, 4, 3, C)
    pool = CodaPromptPool(2, 6, 4, C)
    assert pool.n_layers == 2 and pool.length == 4
    assert pool.prompts.shape == (2, 6, 4, C) and pool.keys.shape == (2, 6, C)
    assert pool.attention.shape == (2, 6, C) and not pool.prompts.any()
    pool.init_components(0, 6, torch.Generator().manual_seed(0))
    p, k, a = pool.used(5, 2)
    assert p.shape[1] == k.shape[1] == a.shape[1] == 5
    for t, full in ((p, pool.prompts), (k, pool.keys), (a, pool.attention)):
        torch.testing.assert_close(t, full[:, :5])
    (p.sum() + k.sum() + a.sum()).backward()
    for full in (pool.prompts, pool.keys, pool.attention):
        assert full.grad[:, :2].abs().max() == 0
        assert full.grad[:, 2:5].abs().min() > 0
        assert full.grad[:, 5:].abs().max() == 0
    # every tensor and every layer gets its own fresh rows
    fresh = CodaPromptPool(2, 3, 2, 4)
    fresh.init_components(0, 3, torch.Generator().manual_seed(1))
    assert not torch.equal(fresh.keys[0], fresh.keys[1])
    assert not torch.equal(fresh.keys[0], fresh.attention[0])
    assert fresh.prompts.abs().sum() > 0
    loss = fresh.ortho_loss(3, 0)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        fresh.keys[1, 0] *= 2
    want = orthogonality_penalty(fresh.keys[1].detach()).item()
    assert fresh.ortho_loss(3, 0).item() == pytest.approx(want, rel=1e-5)


def test_coda_vit_forward_by_hand():
    vit = tiny_vit()
    x = images()
    m = CodaViT(vit, 6, pool_size=4, length=4, prompt_layers=(1, 3),
                generator=torch.Generator().manual_seed(0))
    assert m.prompt_layers == [1, 3] and m.num_heads == HEADS and m.embed_dim == C
    assert isinstance(vit.blocks[1].attn, PrefixAttention) and vit.blocks[1].attn.fused
    assert not isinstance(vit.blocks[0].attn, PrefixAttention)
    assert not any(p.requires_grad for p in vit.parameters())
    assert torch.equal(m.head.weight, seeded_head(C, 6, torch.Generator().manual_seed(0)).weight)
    assert isinstance(m.fc_norm, nn.Identity) and m.num_classes == 6
    m.pool.init_components(0, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.pool.prompts.mul_(20)
    q = m.query(x)
    torch.testing.assert_close(q, vit(x))
    pre = m.pool.prefixes(q, 3, 3, HEADS)
    want = by_hand(vit, x, {1: pre[0], 3: pre[1]})
    torch.testing.assert_close(m.forward_features(x, 3), want)
    torch.testing.assert_close(m.forward_features(x, 3, 1, query=q), want)
    torch.testing.assert_close(m(x, 3), m.head(want[:, 0]))
    assert not torch.allclose(m(x, 4), m(x, 3))
    # default frozen = stop: nothing trainable reaches the pool
    m.forward_features(x, 3).sum().backward()
    assert m.pool.prompts.grad is None or m.pool.prompts.grad.abs().max() == 0
    m.forward_features(x, 3, 1).sum().backward()
    assert m.pool.prompts.grad[:, 1:3].abs().max() > 0
    assert m.pool.prompts.grad[:, :1].abs().max() == 0
    # an explicit query is used as is
    other = m.forward_features(x, 3, query=torch.flip(q, [0]))
    assert not torch.allclose(other, want)
    d = CodaViT(tiny_vit(depth=5), 6, pool_size=2, fused=False)
    assert d.prompt_layers == [0, 1, 2, 3, 4] and d.pool.length == 8
    assert not d.vit.blocks[0].attn.fused


# ------------------------------------------------------------------------------ SMoPE


def test_adaptive_noise_is_off_without_frequent_experts_or_eps():
    s = torch.tensor([[[1.0, 3.0, 2.0]]], requires_grad=True)
    assert adaptive_noise(s, None, 0.5) is None
    assert adaptive_noise(s, torch.ones(1, 3), 0.0) is None
    got = adaptive_noise(s, torch.tensor([[True, False, True]]), 0.5)
    torch.testing.assert_close(got, torch.tensor([[[1.0, 0.0, 1.0]]]))
    assert not got.requires_grad  # the range is detached
    torch.testing.assert_close(select_experts(s, 2, got), torch.tensor([[[1, 2]]]))
    assert select_experts(s, 2, None).tolist() == [[[1, 2]]]
    assert select_experts(s, 1, torch.tensor([[[0.0, 2.5, 0.0]]])).tolist() == [[[2]]]


def _expert_attention(fused):
    torch.manual_seed(0)
    from timm.models.vision_transformer import Attention

    attn = Attention(C, num_heads=HEADS, qkv_bias=True).double()
    return ExpertPrefixAttention.from_timm(attn, gate="linear", activation="tanh", fused=fused)


def slow_experts(mod, x, keys, values, chosen):
    """Per sample and head: logits [mean-query scores of the chosen experts, tokens]."""
    B, N, _ = x.shape
    qkv = x @ mod.qkv.weight.T + mod.qkv.bias
    out = torch.zeros(B, N, C, dtype=x.dtype)
    for b in range(B):
        heads = []
        for h in range(HEADS):
            q = qkv[b, :, h * D:(h + 1) * D]
            k = qkv[b, :, C + h * D:C + (h + 1) * D]
            v = qkv[b, :, 2 * C + h * D:2 * C + (h + 1) * D]
            js = chosen[b][h]
            s_e = torch.stack([q.mean(0) @ keys[h, j] / math.sqrt(D) for j in js])
            logits = torch.cat([s_e.expand(N, -1), q @ k.T / math.sqrt(D)], dim=1)
            heads.append(logits.softmax(1) @ torch.cat([values[h, js], v]))
        out[b] = torch.cat(heads, 1) @ mod.proj.weight.T + mod.proj.bias
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_expert_attention_sparse_and_dense_against_a_loop(fused):
    mod = _expert_attention(fused)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, C, generator=g, dtype=torch.float64)
    keys = torch.randn(HEADS, 4, D, generator=g, dtype=torch.float64)
    values = torch.randn(HEADS, 4, D, generator=g, dtype=torch.float64)
    out, route = mod.forward_experts(x, keys, values, top_k=2)
    assert isinstance(route, Routing) and route.selected.shape == (2, HEADS, 2)
    qkv = (x @ mod.qkv.weight.T + mod.qkv.bias).reshape(2, 5, 3, HEADS, D).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(route.scores, proxy_scores(qkv[0], keys, D**-0.5))
    chosen = route.selected.tolist()
    for b in range(2):
        for h in range(HEADS):
            best = sorted(range(4), key=lambda j: -float(route.scores[b, h, j].detach()))[:2]
            assert chosen[b][h] == best
    torch.testing.assert_close(out, slow_experts(mod, x, keys, values, chosen), rtol=1e-9,
                               atol=1e-9)
    everyone = [[[0, 1, 2, 3]] * HEADS] * 2
    for k in (0, -1, 4, 9):
        dense, r = mod.forward_experts(x, keys, values, top_k=k)
        assert r.selected is None
        torch.testing.assert_close(dense, slow_experts(mod, x, keys, values, everyone),
                                   rtol=1e-9, atol=1e-9)
    # a penalty function sees this layer's scores and moves the choice
    seen = []

    def penalty(scores):
        seen.append(scores)
        return torch.zeros_like(scores).index_fill(-1, torch.tensor(chosen[0][0][:1]), 1e9)

    _, r = mod.forward_experts(x, keys, values, top_k=2, penalty_fn=penalty)
    assert len(seen) == 1 and torch.equal(seen[0], route.scores)
    assert chosen[0][0][0] not in r.selected[0, 0].tolist()
    with pytest.raises(ValueError, match=r"^expert keys/values have shapes \(2, 4, 8\)/\(2, 3, 8\)"
                                         r", expected \(2, N_p, 8\)$"):
        mod.forward_experts(x, keys, values[:, :3], top_k=2)
    with pytest.raises(ValueError, match="expected"):
        mod.forward_experts(x, keys[:1], values[:1], top_k=2)
    with pytest.raises(ValueError, match="expected"):
        mod.forward_experts(x, keys[..., :4], values[..., :4], top_k=2)


def test_expert_attention_dropout_only_in_training():
    mod = _expert_attention(True)
    mod.attn_drop = nn.Dropout(1.0)
    x = torch.randn(2, 5, C, dtype=torch.float64)
    keys = torch.randn(HEADS, 3, D, dtype=torch.float64)
    mod.eval()
    out, _ = mod.forward_experts(x, keys, keys, top_k=2)
    assert not torch.allclose(out, mod.proj.bias.expand_as(out))
    mod.train()
    for fused in (True, False):
        mod.fused = fused
        out, _ = mod.forward_experts(x, keys, keys, top_k=2)
        torch.testing.assert_close(out, mod.proj.bias.expand_as(out))


def test_prompt_experts_init_and_smope_vit_by_hand():
    pe = PromptExperts(2, HEADS, 5, D, generator=torch.Generator().manual_seed(0))
    assert pe.key.shape == pe.value.shape == (2, HEADS, 5, D) and pe.num_experts == 5
    g = torch.Generator().manual_seed(0)
    assert torch.equal(pe.key, torch.rand(2, HEADS, 5, D, generator=g))
    assert torch.equal(pe.value, torch.rand(2, HEADS, 5, D, generator=g))
    vit = tiny_vit()
    x = images()
    m = SMoPEViT(vit, 4, num_experts=5, prompt_layers=(0, 2), fused=False,
                 generator=torch.Generator().manual_seed(0))
    assert m.prompt_layers == [0, 2] and (m.num_heads, m.head_dim, m.embed_dim) == (HEADS, D, C)
    assert isinstance(vit.blocks[2].attn, ExpertPrefixAttention) and not vit.blocks[2].attn.fused
    assert not isinstance(vit.blocks[1].attn, PrefixAttention)
    assert m.experts.key.shape == (2, HEADS, 5, D)
    assert m.head.out_features == 4 and m.head.bias.abs().sum() == 0
    calls = []

    def pen(j):
        def fn(scores):
            calls.append(j)
            return None
        return fn

    tokens, routing = m.forward_features(x, top_k=2, penalty_fns=[pen(0), pen(1)])
    assert calls == [0, 1] and len(routing) == 2
    h = embed_tokens(vit, x)
    for i, block in enumerate(vit.blocks):
        if i in (0, 2):
            j = [0, 2].index(i)
            out, r = block.attn.forward_experts(block.norm1(h), m.experts.key[j],
                                                m.experts.value[j], top_k=2)
            assert torch.equal(r.selected, routing[j].selected)
            h = finish_block(block, h, out)
        else:
            h = block(h)
    torch.testing.assert_close(tokens, vit.norm(h))
    torch.testing.assert_close(m.forward_head(tokens), m.head(tokens[:, 0]))
    torch.testing.assert_close(m.forward_head(tokens, pre_logits=True), tokens[:, 0])
    torch.testing.assert_close(m(x, top_k=2), m.head(tokens[:, 0]))
    dense, r = m.forward_features(x, top_k=0)
    assert all(x.selected is None for x in r)
    assert not torch.allclose(m(x), m(x, top_k=1))  # default top_k = 5 = all experts here
    torch.testing.assert_close(m(x), m.head(dense[:, 0]))
    d = SMoPEViT(tiny_vit(depth=6), 4)
    assert d.prompt_layers == [0, 1, 2, 3, 4, 5] and d.experts.num_experts == 25
    assert d.vit.blocks[0].attn.fused
    # with the plain attention (no experts) the expert module is timm's attention
    plain = ExpertPrefixAttention.from_timm(tiny_vit().blocks[3].attn, gate="linear",
                                            activation="tanh", fused=True)
    t = torch.randn(2, 5, C)
    torch.testing.assert_close(plain(t), tiny_vit().blocks[3].attn(t))


def test_gram_schmidt_over_full_rows_are_the_generators_second_draw():
    got = gram_schmidt_rows(torch.zeros(5, 3, dtype=torch.float64), 0, 5,
                            torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    for row in range(5):
        first = torch.randn(3, generator=g, dtype=torch.float64)
        if row >= 3:  # no room left: the next draw, normalised
            second = torch.randn(3, generator=g, dtype=torch.float64)
            torch.testing.assert_close(got[row], second / second.norm(), rtol=0, atol=1e-15)
        else:
            assert first.norm() > 0


def test_smope_vit_draws_experts_and_head_from_the_generator_and_default_top_k():
    vit = tiny_vit()
    m = SMoPEViT(vit, 4, num_experts=7, prompt_layers=(0, 2),
                 generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    ref = PromptExperts(2, HEADS, 7, D, generator=g)
    assert torch.equal(m.experts.key, ref.key) and torch.equal(m.experts.value, ref.value)
    assert torch.equal(m.head.weight, seeded_head(C, 4, g).weight)
    x = images()
    tokens, routing = m.forward_features(x, top_k=5)
    assert routing[0].selected.shape[-1] == 5
    torch.testing.assert_close(m(x), m.head(tokens[:, 0]))


def test_one_prompted_layer_is_enough():
    coda = CodaViT(tiny_vit(), 3, pool_size=2, length=2, prompt_layers=(2,))
    smope = SMoPEViT(tiny_vit(), 3, num_experts=3, prompt_layers=(1,))
    assert coda.num_heads == HEADS and smope.num_heads == HEADS and smope.head_dim == D
