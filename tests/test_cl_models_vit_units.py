"""The ViT helpers, the prompted ViT, the key-matched prompt pools (L2P, DualPrompt) and the TII
head on a tiny timm ViT, against timm's own forward and hand-built keys and prompts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from cl_helpers import tiny_images, tiny_timm_vit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cl.models import frozen_vit, prompt_pools
from cl.models import vit as vitmod
from cl.models.frozen_vit import FrozenPrefixViT, freeze, freeze_and_wrap, seeded_head
from cl.models.prefix_attention import PrefixAttention
from cl.models.prompt_pools import (
    GEPrefixViT,
    PromptTuningViT,
    cosine_match,
    cosine_similarity_matrix,
    key_pull,
    majority_vote,
    official_vote,
)
from cl.models.tii import MlpAdapter, TIIHead
from cl.models.vit import (
    PromptedViT,
    embed_tokens,
    finish_block,
    fresh_fc_norm,
    pooled,
    run_blocks,
    seeded_trunc_normal_head,
    trunc_normal_head,
    uses_fc_norm,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, HEADS, DEPTH = 16, 2, 4


def tiny_vit(seed=0, depth=DEPTH, **kw) -> VisionTransformer:
    return tiny_timm_vit(seed, depth, embed_dim=C, num_heads=HEADS, **kw)


images = tiny_images


def _gated_by_hand(vit, x, prefixes, prompt, layers=(0, 2)) -> torch.Tensor:
    """The prompted forward written out: block ``layers[j]`` attends with ``prefixes[j]`` and
    the prompt's gate scalars of layer ``j``; the other blocks run as in timm."""
    h = embed_tokens(vit, x)
    for i, block in enumerate(vit.blocks):
        if i in layers:
            j = list(layers).index(i)
            out = block.attn(block.norm1(h), prefix=prefixes[j], alpha=prompt.alpha(j),
                             tau=prompt.tau(j))
            h = finish_block(block, h, out)
        else:
            h = block(h)
    return vit.norm(h)


# ------------------------------------------------------------------------------ vit helpers


def test_run_blocks_and_pooled_are_timms_forward():
    vit = tiny_vit()
    x = images()
    tokens = run_blocks(vit, x)
    torch.testing.assert_close(tokens, vit.forward_features(x))
    torch.testing.assert_close(pooled(vit, tokens), vit.forward_head(tokens, pre_logits=True))
    torch.testing.assert_close(pooled(vit, tokens), vit(x))
    assert embed_tokens(vit, x).shape == (3, 5, C)  # 4 patches + CLS
    # a prompted layer whose attention is the block's own gives the plain forward
    calls = []

    def attend(block, normed, j):
        calls.append(j)
        return block.attn(normed)

    torch.testing.assert_close(run_blocks(vit, x, [3, 1], attend), tokens)
    assert calls == [1, 0]  # block 1 is layers[1], block 3 is layers[0]
    h = embed_tokens(vit, x)
    block = vit.blocks[0]
    torch.testing.assert_close(finish_block(block, h, block.attn(block.norm1(h))), block(h))
    # an attention output of zero leaves the residual path and the MLP
    z = finish_block(block, h, torch.zeros_like(h))
    torch.testing.assert_close(z, h + block.mlp(block.norm2(h)))


def test_pooled_for_average_pooling_and_old_timm():
    vit = tiny_vit(global_pool="avg", class_token=True, fc_norm=False)
    x = images()
    tokens = vit.forward_features(x)
    torch.testing.assert_close(pooled(vit, tokens), vit.forward_head(tokens, pre_logits=True))
    torch.testing.assert_close(pooled(vit, tokens), tokens[:, 1:].mean(dim=1))

    class OldAvg:  # timm 0.9: no ``pool`` attribute
        global_pool = "avg"
        num_prefix_tokens = 2

    t = torch.randn(2, 6, 3)
    torch.testing.assert_close(pooled(OldAvg(), t), t[:, 2:].mean(dim=1))

    class OldMap:
        global_pool = "map"

    with pytest.raises(ValueError, match=r"^global_pool='map' needs timm >= 1.0 "
                                         r"\(VisionTransformer.pool\)$"):
        pooled(OldMap(), t)

    class NoPoolAttr:
        pass

    torch.testing.assert_close(pooled(NoPoolAttr(), t), t[:, 0])


def test_fc_norm_detection_and_fresh_copy():
    plain = tiny_vit()
    assert not uses_fc_norm(plain) and isinstance(fresh_fc_norm(plain), nn.Identity)
    moco = tiny_vit(global_pool="token", fc_norm=True)
    assert uses_fc_norm(moco)
    fresh = fresh_fc_norm(moco)
    assert isinstance(fresh, nn.LayerNorm) and fresh is not moco.fc_norm
    assert fresh.normalized_shape == (C,) and fresh.eps == moco.fc_norm.eps
    moco.fc_norm.eps = 1e-3
    assert fresh_fc_norm(moco).eps == 1e-3
    assert torch.equal(fresh.weight, torch.ones(C)) and torch.equal(fresh.bias, torch.zeros(C))
    assert not uses_fc_norm(nn.Module())


def test_head_initialisation():
    head = nn.Linear(400, 300)
    nn.init.constant_(head.bias, 1.0)
    trunc_normal_head(head)
    assert head.bias.abs().sum() == 0
    assert head.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert head.weight.abs().max() <= 2.0
    a, b = nn.Linear(30, 20), nn.Linear(30, 20)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    seeded_trunc_normal_head(a, torch.Generator().manual_seed(9))
    assert torch.equal(torch.rand(3), before)  # the global RNG is untouched
    seeded_trunc_normal_head(b, torch.Generator().manual_seed(9))
    assert torch.equal(a.weight, b.weight) and a.bias.abs().sum() == 0
    seeded_trunc_normal_head(b, torch.Generator().manual_seed(10))
    assert not torch.equal(a.weight, b.weight)
    # the seed is drawn from the generator: a generator that moved on gives another head
    g = torch.Generator().manual_seed(9)
    torch.randint(0, 2**62, (1,), generator=g)
    seeded_trunc_normal_head(b, g)
    assert not torch.equal(a.weight, b.weight)
    # no generator: the global RNG, which then has moved on
    torch.manual_seed(3)
    seeded_trunc_normal_head(a, None)
    torch.manual_seed(3)
    seeded_trunc_normal_head(b, None)
    assert torch.equal(a.weight, b.weight)
    h = seeded_head(30, 7, torch.Generator().manual_seed(9))
    assert (h.in_features, h.out_features) == (30, 7)
    c = nn.Linear(30, 7)
    seeded_trunc_normal_head(c, torch.Generator().manual_seed(9))
    assert torch.equal(h.weight, c.weight) and h.bias.abs().sum() == 0


# ------------------------------------------------------------------------------ prompted ViT


def test_prompted_vit_validation_freezing_and_wrapping():
    vit = tiny_vit()
    for bad in ([], [0, 0], [DEPTH], [-1]):
        with pytest.raises(ValueError, match=r"^prompt_layers: .* must be distinct block "
                                             rf"indices in \[0, {DEPTH}\)$"):
            PromptedViT(vit, 5, pool_size=2, prompt_length=3, prompt_layers=bad)
    m = PromptedViT(vit, 5, pool_size=2, prompt_length=3, prompt_layers=(1, 3), gate="norga",
                    activation="sigmoid", fused=False, generator=torch.Generator().manual_seed(0))
    assert not any(p.requires_grad for p in m.vit.parameters())
    assert m.prompt_layers == [1, 3] and m.gate == "norga"
    assert (m.num_heads, m.head_dim, m.embed_dim) == (HEADS, C // HEADS, C)
    for i in range(DEPTH):
        a = vit.blocks[i].attn
        if i in (1, 3):
            assert isinstance(a, PrefixAttention)
            assert (a.gate, a.activation, a.fused) == ("norga", "sigmoid", False)
        else:
            assert not isinstance(a, PrefixAttention)
    assert m.prompt.prompt.shape[:3] == (2, 2, 2)  # layers, pool, key/value
    assert m.prompt.prompt.shape[-3:] == (3, HEADS, C // HEADS)
    assert isinstance(m.fc_norm, nn.Identity) and not m.uses_fc_norm
    assert (m.head.in_features, m.head.out_features, m.num_classes) == (C, 5, 5)
    m.set_fused(True)
    assert vit.blocks[1].attn.fused and vit.blocks[3].attn.fused
    assert not isinstance(vit.blocks[2].attn, PrefixAttention)
    # the head is drawn from the generator after the prompt
    g = torch.Generator().manual_seed(0)
    m2 = PromptedViT(tiny_vit(), 5, pool_size=2, prompt_length=3, prompt_layers=(1, 3),
                     generator=g)
    assert torch.equal(m2.head.weight, m.head.weight) and m2.head.bias.abs().sum() == 0
    m.reset_classifier(9)
    assert (m.head.out_features, m.num_classes) == (9, 9) and m.head.bias.abs().sum() == 0
    moco = PromptedViT(tiny_vit(fc_norm=True, global_pool="token", depth=5), 5, pool_size=2,
                       prompt_length=3)
    assert moco.prompt_layers == [0, 1, 2, 3, 4]
    assert moco.uses_fc_norm and isinstance(moco.fc_norm, nn.LayerNorm)
    assert moco.fc_norm.weight.requires_grad


def test_prompted_vit_forward_against_explicit_prefixes_and_plain_vit():
    vit = tiny_vit()
    x = images()
    plain_tokens = vit.forward_features(x)
    m = PromptedViT(vit, 5, pool_size=3, prompt_length=2, prompt_layers=(0, 2), gate="norga",
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.prompt.prompt.normal_()
    torch.testing.assert_close(m.forward_features(x), plain_tokens)
    torch.testing.assert_close(m.backbone_features(x), plain_tokens[:, 0])
    task_ids = torch.tensor([2, 0, 2])
    prefixes = m.prompt.gather(task_ids)
    by_ids = m.forward_features(x, task_ids)
    torch.testing.assert_close(m.forward_features(x, prefixes=prefixes), by_ids)
    assert not torch.allclose(by_ids, plain_tokens)
    # the explicit prefixes win over task_ids
    torch.testing.assert_close(m.forward_features(x, torch.tensor([1, 1, 1]), prefixes=prefixes),
                               by_ids)
    # by hand: blocks 0 and 2 attend with their layer's prefix and gate scalars
    torch.testing.assert_close(by_ids, _gated_by_hand(vit, x, prefixes, m.prompt))
    logits = m(x, task_ids)
    torch.testing.assert_close(logits, m.head(by_ids[:, 0]))
    torch.testing.assert_close(m.forward_head(by_ids, pre_logits=True), by_ids[:, 0])
    torch.testing.assert_close(m.pre_logits(by_ids), by_ids[:, 0])
    # each sample's output depends on its own prompt only
    torch.testing.assert_close(m(x[:1], task_ids[:1]), logits[:1])


def test_prompted_vit_fc_norm_is_applied_after_pooling():
    m = PromptedViT(tiny_vit(fc_norm=True, global_pool="token"), 4, pool_size=1,
                    prompt_length=2, prompt_layers=(0,))
    with torch.no_grad():
        m.fc_norm.weight.uniform_(0.5, 2.0)
    tokens = torch.randn(2, 5, C)
    torch.testing.assert_close(m.forward_head(tokens, pre_logits=True), m.fc_norm(tokens[:, 0]))
    torch.testing.assert_close(m.forward_head(tokens), m.head(m.fc_norm(tokens[:, 0])))
    torch.testing.assert_close(m.pre_logits(tokens), tokens[:, 0])


# ------------------------------------------------------------------------------ frozen_vit


def test_freeze_and_wrap():
    vit = tiny_vit()
    freeze(vit)
    assert not any(p.requires_grad for p in vit.parameters())
    vit = tiny_vit()
    for bad in ([], [1, 1], [4], [-1]):
        with pytest.raises(ValueError, match=rf"^prompt_layers: .* must be distinct block indices "
                                             rf"in \[0, {DEPTH}\)$"):
            freeze_and_wrap(vit, bad, PrefixAttention, True)
    assert all(p.requires_grad for p in vit.parameters())  # refused before freezing
    assert freeze_and_wrap(vit, (2, 0), PrefixAttention, False) == [2, 0]
    assert not any(p.requires_grad for p in vit.parameters())
    assert isinstance(vit.blocks[0].attn, PrefixAttention) and not vit.blocks[0].attn.fused
    assert not isinstance(vit.blocks[1].attn, PrefixAttention)

    class Model(FrozenPrefixViT, nn.Module):
        def __init__(self):
            nn.Module.__init__(self)
            self.vit = vit
            self.prompt_layers = [2, 0]
            self._add_head(6, torch.Generator().manual_seed(2))

    m = Model()
    assert isinstance(m.fc_norm, nn.Identity) and m.num_classes == 6
    assert torch.equal(m.head.weight, seeded_head(C, 6, torch.Generator().manual_seed(2)).weight)
    m.set_fused(True)
    assert vit.blocks[0].attn.fused and vit.blocks[2].attn.fused
    t = torch.randn(2, 5, C)
    torch.testing.assert_close(m.pre_logits(t), t[:, 0])
    assert frozen_vit.seeded_head is seeded_head


# ------------------------------------------------------------------------------ key matching


def test_cosine_similarity_and_matching_against_hand_built_keys():
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -3.0]])
    query = torch.tensor([[2.0, 0.1, 0.0], [0.0, 1.0, 0.9], [0.0, 0.0, 5.0]])
    sim = cosine_similarity_matrix(query, keys)
    want = torch.tensor([[float(q @ k / (q.norm() * k.norm())) for k in keys] for q in query])
    torch.testing.assert_close(sim, want)
    ids, full = cosine_match(query, keys, 2)
    assert ids[:2].tolist() == [[0, 2], [1, 2]]  # most similar first
    assert 3 not in ids[2].tolist()  # the third query ties keys 0, 1, 2 at 0
    torch.testing.assert_close(full, want)
    allowed = torch.tensor([False, True, True, True])
    ids, full = cosine_match(query, keys, 2, allowed)
    assert ids.tolist()[:2] == [[2, 1], [1, 2]]
    torch.testing.assert_close(full, want)  # the similarity itself is not masked
    ids, _ = cosine_match(query, keys, 3, allowed)
    assert sorted(ids[2].tolist()) == [1, 2, 3] and ids[2, 2] == 3
    with pytest.raises(ValueError, match=r"^top_k=4 must be in \[1, 3\] \(selectable keys\)$"):
        cosine_match(query, keys, 4, allowed)
    with pytest.raises(ValueError, match=r"^top_k=0 must be in \[1, 4\] \(selectable keys\)$"):
        cosine_match(query, keys, 0)
    assert cosine_match(query, keys, 4)[0].shape == (3, 4)


def test_majority_vote_and_official_vote():
    ids = torch.tensor([[3, 1], [1, 0], [3, 1], [2, 0]])  # counts: 1:3, 3:2, 0:2, 2:1
    assert majority_vote(ids, 2).tolist() == [[1, 0]] * 4  # tie 3 vs 0 -> smaller id
    assert majority_vote(ids, 3).tolist() == [[1, 0, 3]] * 4
    assert majority_vote(torch.tensor([[4], [4]]), 3).tolist() == [[4, 4, 4]] * 2  # padded
    assert majority_vote(torch.tensor([[5, 2], [2, 5]]), 3).tolist() == [[2, 5, 2]] * 2
    got = official_vote(ids, 1, 6)
    assert got.tolist() == [[1]] * 4
    assert official_vote(torch.tensor([[4], [4], [2]]), 2, 5).tolist() == [[4, 2]] * 3
    # fewer ids than the pool: padded with the smallest chosen id and count 0
    assert official_vote(torch.tensor([[4], [4]]), 2, 3).tolist() == [[4, 4]] * 2
    assert official_vote(torch.tensor([[1], [3], [3]]), 2, 2).tolist() == [[3, 1]] * 3


def test_key_pull_is_the_mean_summed_cosine_and_only_keys_get_gradients():
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    keys = torch.tensor([[3.0, 1.0], [1.0, 2.0], [-1.0, -0.5]], requires_grad=True)
    ids = torch.tensor([[0, 1], [1, 2]])
    got = key_pull(query, keys, ids)

    def cos(u, v):
        return (u[0] * v[0] + u[1] * v[1]) / math.hypot(*u) / math.hypot(*v)

    qs, ks = [[1.0, 0.0], [0.0, 2.0]], [[3.0, 1.0], [1.0, 2.0], [-1.0, -0.5]]
    want = (cos(qs[0], ks[0]) + cos(qs[0], ks[1]) + cos(qs[1], ks[1]) + cos(qs[1], ks[2])) / 2
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert query.grad is None and keys.grad is not None and keys.grad.abs().sum() > 0
    q = F.normalize(query.detach(), dim=-1)
    k = keys.detach()
    # gradient of cos(q, k) w.r.t. k: (q - cos k_hat) / |k|, summed over the choosers, / B
    for j, choosers in ((0, [0]), (1, [0, 1]), (2, [1])):
        kh = k[j] / k[j].norm()
        want = sum((q[b] - (q[b] @ kh) * kh) / k[j].norm() for b in choosers) / 2
        torch.testing.assert_close(keys.grad[j], want)


def test_uniform_init_range_and_generator():
    a = prompt_pools._uniform((4000,), torch.Generator().manual_seed(0))
    b = prompt_pools._uniform((4000,), torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert a.min() < -0.99 and a.max() > 0.99 and abs(a.mean()) < 0.05


# ------------------------------------------------------------------------------ L2P


def test_prompt_tuning_vit_prepends_the_chosen_prompts():
    vit = tiny_vit()
    x = images()
    m = PromptTuningViT(vit, 7, pool_size=4, length=2, generator=torch.Generator().manual_seed(0))
    assert not any(p.requires_grad for p in vit.parameters())
    assert m.key.shape == (4, C) and m.prompt.shape == (4, 2, C) and m.embed_dim == C
    assert (m.head.out_features, m.num_classes, m.pool_size, m.length) == (7, 7, 4, 2)
    assert m.key.abs().max() <= 1 and m.prompt.abs().max() <= 1
    g = torch.Generator().manual_seed(0)
    key = prompt_pools._uniform((4, C), g)
    assert torch.equal(m.key, key)
    head = seeded_head(C, 7, g)
    assert torch.equal(m.head.weight, head.weight)
    assert torch.equal(m.prompt, prompt_pools._uniform((4, 2, C), g))
    torch.testing.assert_close(m.query(x), vit(x))
    torch.testing.assert_close(m.forward_features(x), vit.forward_features(x))
    ids = torch.tensor([[3, 0], [1, 1], [0, 2]])
    tokens = m.forward_features(x, ids)
    h = embed_tokens(vit, x)
    manual = torch.cat([m.prompt[ids].flatten(1, 2), h], dim=1)
    torch.testing.assert_close(tokens, vit.norm(vit.blocks(manual)))
    assert tokens.shape == (3, 4 + 5, C)
    torch.testing.assert_close(m.pre_logits(tokens, ids), tokens[:, 4])
    torch.testing.assert_close(m.pre_logits(tokens, None), tokens[:, 0])
    torch.testing.assert_close(m.features(x, ids), tokens[:, 4])
    torch.testing.assert_close(m(x, ids), m.head(tokens[:, 4]))
    torch.testing.assert_close(m(x), m.head(vit(x)))
    matched = m.match(m.query(x), 2)
    want = cosine_match(m.query(x), m.key, 2)
    assert torch.equal(matched[0], want[0])
    torch.testing.assert_close(m.classify(tokens[:, 4]), m.head(tokens[:, 4]))
    m.reset_classifier(3)
    assert (m.head.out_features, m.num_classes) == (3, 3) and m.head.bias.abs().sum() == 0


def test_keyed_vit_needs_a_cls_token_and_token_pooling():
    with pytest.raises(ValueError, match=r"^key-matched prompts need a ViT with a \[CLS\] token "
                                         r"and token pooling$"):
        PromptTuningViT(tiny_vit(global_pool="avg"), 3, pool_size=2, length=1)
    with pytest.raises(ValueError, match="CLS"):
        PromptTuningViT(tiny_vit(class_token=False, global_pool="avg"), 3, pool_size=2, length=1)
    moco = PromptTuningViT(tiny_vit(fc_norm=True, global_pool="token"), 3, pool_size=2, length=1)
    assert isinstance(moco.fc_norm, nn.LayerNorm)
    f = torch.randn(2, C)
    torch.testing.assert_close(moco.classify(f), moco.head(moco.fc_norm(f)))


# ------------------------------------------------------------------------------ DualPrompt


def test_ge_prefix_vit_layer_prefixes_by_hand():
    vit = tiny_vit()
    m = GEPrefixViT(vit, 5, pool_size=3, g_layers=(0, 1), g_length=2, e_layers=(1, 2),
                    e_length=3, generator=torch.Generator().manual_seed(0), fused=False)
    D = C // HEADS
    assert m.g_prompt.shape == (2, 2, 2, HEADS, D) and m.e_prompt.shape == (2, 2, 3, 3, HEADS, D)
    assert (m.num_heads, m.head_dim, m.g_length, m.e_length) == (HEADS, D, 2, 3)
    assert not any(p.requires_grad for p in vit.parameters())
    for i in range(DEPTH):
        assert isinstance(vit.blocks[i].attn, PrefixAttention) == (i in (0, 1, 2))
    assert not vit.blocks[1].attn.fused
    e_ids = torch.tensor([2, 0])
    pre = m.layer_prefixes(e_ids)
    assert sorted(pre) == [0, 1, 2]
    for b in range(2):
        torch.testing.assert_close(pre[0][b], m.g_prompt[0])
        torch.testing.assert_close(pre[1][b], torch.cat(
            [m.g_prompt[1], torch.stack([m.e_prompt[0, 0, e_ids[b]], m.e_prompt[0, 1, e_ids[b]]])],
            dim=1))
        torch.testing.assert_close(pre[2][b, 0], m.e_prompt[1, 0, e_ids[b]])
        torch.testing.assert_close(pre[2][b, 1], m.e_prompt[1, 1, e_ids[b]])
    legacy = GEPrefixViT(tiny_vit(), 5, pool_size=3, g_layers=(), e_layers=(2,), e_length=3,
                         legacy_kv_reshape=True)
    assert legacy.g_prompt is None
    lp = legacy.layer_prefixes(e_ids)
    chosen = legacy.e_prompt[0][:, e_ids]
    torch.testing.assert_close(lp[2], chosen.reshape(2, 2, 3, HEADS, D))
    assert not torch.equal(lp[2], chosen.transpose(0, 1))


def test_ge_prefix_vit_forward_and_checks():
    vit = tiny_vit()
    x = images()
    m = GEPrefixViT(vit, 5, pool_size=3, g_layers=(0,), g_length=2, e_layers=(2,), e_length=3,
                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.forward_features(x), vit.forward_features(x))
    e_ids = torch.tensor([1, 2, 1])
    pre = m.layer_prefixes(e_ids)
    h = embed_tokens(vit, x)
    for i, block in enumerate(vit.blocks):
        if i in pre:
            h = finish_block(block, h, block.attn(block.norm1(h), prefix=pre[i]))
        else:
            h = block(h)
    torch.testing.assert_close(m.forward_features(x, e_ids), vit.norm(h))
    torch.testing.assert_close(m.features(x, e_ids), vit.norm(h)[:, 0])
    torch.testing.assert_close(m(x, e_ids), m.head(vit.norm(h)[:, 0]))
    torch.testing.assert_close(m(x), m.head(vit(x)))
    m.set_fused(False)
    assert not vit.blocks[0].attn.fused and not vit.blocks[2].attn.fused
    torch.testing.assert_close(m(x, e_ids), m.head(vit.norm(h)[:, 0]), rtol=1e-5, atol=1e-5)
    for kw, msg in (({"g_layers": (0, 0)}, r"^method_options.g_layers: \[0, 0\] must be "
                                           r"distinct block indices in \[0, 4\)$"),
                    ({"e_layers": (4,)}, r"^method_options.e_layers: \[4\] must be distinct "
                                         r"block indices in \[0, 4\)$"),
                    ({"e_layers": (-1,)}, "e_layers"),
                    ({"e_layers": ()}, "^method_options.e_layers: must name at least one block$")):
        with pytest.raises(ValueError, match=msg):
            GEPrefixViT(tiny_vit(), 5, pool_size=2, **kw)
    d = GEPrefixViT(tiny_vit(depth=5), 5, pool_size=2)  # defaults: G 0-1 (5), E 2-4 (20)
    assert (d.g_layers, d.e_layers, d.g_length, d.e_length) == ([0, 1], [2, 3, 4], 5, 20)
    assert not d.legacy_kv_reshape and d.vit.blocks[2].attn.fused


# ------------------------------------------------------------------------------ TII head


def test_mlp_adapter_structures_by_hand():
    torch.manual_seed(0)
    a = MlpAdapter(4, [2])
    kinds = [type(m).__name__ for m in a.body]
    assert kinds == ["Linear", "GELU", "Linear"]
    assert [(m.in_features, m.out_features) for m in a.body if isinstance(m, nn.Linear)] == [
        (4, 8), (8, 4)]
    x = torch.randn(3, 4)
    l1, l2 = a.body[0], a.body[2]
    want = F.layer_norm(x + l2(F.gelu(l1(x))), (4,))
    torch.testing.assert_close(a(x), want)
    b = MlpAdapter(4, [4, 4])
    assert [type(m).__name__ for m in b.body] == ["Linear", "GELU", "Linear", "LayerNorm",
                                                  "Linear"]
    assert [(m.in_features, m.out_features) for m in b.body if isinstance(m, nn.Linear)] == [
        (4, 16), (16, 16), (16, 4)]
    assert b.body[3].normalized_shape == (16,)
    c = MlpAdapter(4, (3,), final_norm=False)
    assert isinstance(c.norm, nn.Identity)
    torch.testing.assert_close(c(x), x + c.body(x))
    assert isinstance(MlpAdapter(4).norm, nn.LayerNorm) and len(MlpAdapter(4).body) == 3
    for bad in ([], [0], [2, -1]):
        with pytest.raises(ValueError, match=r"^mlp structure must be positive multipliers, got "
                                             r"\[.*\]$"):
            MlpAdapter(4, bad)


def test_tii_head_composition_and_init():
    torch.manual_seed(0)
    t = TIIHead(6, 9)
    assert isinstance(t.fc_norm, nn.Identity) and isinstance(t.mlp.norm, nn.LayerNorm)
    assert (t.head.in_features, t.head.out_features) == (6, 9) and t.head.bias.abs().sum() == 0
    assert t.head.weight.std() < 0.05
    x = torch.randn(5, 6)
    torch.testing.assert_close(t(x), t.head(t.mlp(x)))
    m = TIIHead(6, 9, (4, 4), fc_norm=True)
    assert isinstance(m.fc_norm, nn.LayerNorm) and m.fc_norm.eps == 1e-6
    assert isinstance(m.mlp.norm, nn.Identity) and len(m.mlp.body) == 5
    with torch.no_grad():
        m.fc_norm.weight.uniform_(0.5, 2.0)
    torch.testing.assert_close(m(x), m.head(m.fc_norm(m.mlp(x))))


def test_vit_module_exports():
    assert vitmod.pooled is pooled and prompt_pools.pooled is pooled


# ------------------------------------------------------------------------------ wiring details


def test_prompted_vit_draws_prompt_and_head_from_the_generator_and_passes_settings():
    from cl.models.prompts import PrefixPrompt

    m = PromptedViT(tiny_vit(), 5, pool_size=2, prompt_length=3, prompt_layers=(1, 3),
                    generator=torch.Generator().manual_seed(4), legacy_kv_reshape=True)
    g = torch.Generator().manual_seed(4)
    ref = PrefixPrompt(2, 2, 3, HEADS, C // HEADS, generator=g, legacy_kv_reshape=True)
    assert torch.equal(m.prompt.prompt, ref.prompt) and m.prompt.legacy_kv_reshape
    head = nn.Linear(C, 5)
    seeded_trunc_normal_head(head, g)
    assert torch.equal(m.head.weight, head.weight)
    d = PromptedViT(tiny_vit(), 5, pool_size=2, prompt_length=3, prompt_layers=(1,))
    assert d.vit.blocks[1].attn.fused is True and not d.prompt.legacy_kv_reshape


def test_prompted_vit_passes_each_layers_alpha_and_tau():
    vit = tiny_vit()
    x = images()
    m = PromptedViT(vit, 5, pool_size=2, prompt_length=2, prompt_layers=(0, 2), gate="norga",
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.prompt.prompt.normal_()
        m.prompt.act_scale.copy_(torch.tensor([[0.3, 2.5], [1.7, 0.4]]))
    ids = torch.tensor([1, 0, 1])
    prefixes = m.prompt.gather(ids)
    torch.testing.assert_close(m.forward_features(x, ids),
                               _gated_by_hand(vit, x, prefixes, m.prompt))
    assert m.prompt.alpha(0) != 1 and m.prompt.tau(1) != 1


def test_prompted_vit_pools_like_its_backbone():
    vit = tiny_vit(global_pool="avg", fc_norm=False)
    m = PromptedViT(vit, 3, pool_size=1, prompt_length=1, prompt_layers=(0,))
    t = torch.randn(2, 5, C)
    torch.testing.assert_close(m.pre_logits(t), t[:, 1:].mean(dim=1))


def test_key_matching_details():
    query = torch.tensor([[1.0, 2.0, 0.5], [3.0, -1.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    ids, _ = cosine_match(query, keys, 1)
    assert ids.tolist() == [[3], [0]]
    m = PromptTuningViT(tiny_vit(), 3, pool_size=4, length=1)
    with torch.no_grad():
        m.key.copy_(torch.eye(C)[:4])
    q = torch.zeros(2, C)
    q[:, 0] = 1.0
    q[1, 1] = 2.0
    allowed = torch.tensor([False, True, True, True])
    assert m.match(q, 1)[0].tolist() == [[0], [1]]
    assert m.match(q, 1, allowed)[0].tolist()[1] == [1]
    assert m.match(q, 1, allowed)[0].tolist()[0] != [0]
    # the pull: B = 2 queries of C = 3, neither normalised along the batch
    qk = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
    kk = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    got = key_pull(qk, kk, torch.tensor([[0, 1], [1, 0]]))
    want = (1 / 3 + 2 / 3 + 4 / 5 + 0.0) / 2
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_keyed_vit_attribute_defaults():
    vit = tiny_vit()
    del vit.global_pool  # a ViT without the attribute pools its token
    assert PromptTuningViT(vit, 3, pool_size=2, length=1).pool_size == 2
    vit = tiny_vit()
    del vit.cls_token
    with pytest.raises(ValueError, match=r"\[CLS\] token"):
        PromptTuningViT(vit, 3, pool_size=2, length=1)


def test_ge_prefix_vit_draws_keys_prompts_and_head_from_the_generator():
    m = GEPrefixViT(tiny_vit(), 5, pool_size=3, g_layers=(0,), g_length=2, e_layers=(1,),
                    e_length=2, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    D = C // HEADS
    assert torch.equal(m.key, prompt_pools._uniform((3, C), g))
    assert torch.equal(m.head.weight, seeded_head(C, 5, g).weight)
    assert torch.equal(m.g_prompt, prompt_pools._uniform((1, 2, 2, HEADS, D), g))
    assert torch.equal(m.e_prompt, prompt_pools._uniform((1, 2, 3, 2, HEADS, D), g))
    m.set_fused(False)
    assert m.vit.blocks[0].attn.fused is False and m.vit.blocks[1].attn.fused is False


def test_mlp_adapter_accepts_multiplier_one():
    a = MlpAdapter(4, [1])
    assert [(m.in_features, m.out_features) for m in a.body if isinstance(m, nn.Linear)] == [
        (4, 4), (4, 4)]


def test_pooled_other_timm_pools_and_the_default_prefix_count():
    vit = tiny_vit(global_pool="max", fc_norm=False)
    t = torch.randn(2, 5, C)
    torch.testing.assert_close(pooled(vit, t), t[:, 1:].amax(dim=1))

    class OldAvgDefault:  # timm 0.9 without num_prefix_tokens: one [CLS]
        global_pool = "avg"

    torch.testing.assert_close(pooled(OldAvgDefault(), t), t[:, 1:].mean(dim=1))


def test_seeded_head_is_the_timm_init_under_the_seed_drawn_from_the_generator():
    g = torch.Generator().manual_seed(11)
    a = nn.Linear(6, 4)
    seeded_trunc_normal_head(a, g)
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(11)))
    b = nn.Linear(6, 4)
    torch.manual_seed(seed)
    trunc_normal_head(b)
    assert torch.equal(a.weight, b.weight)
    # no generator: the global RNG's current state, which is then restored
    torch.manual_seed(21)
    seeded_trunc_normal_head(a, None)
    after = torch.rand(2)
    torch.manual_seed(21)
    trunc_normal_head(b)
    assert torch.equal(a.weight, b.weight)
    torch.manual_seed(21)
    assert torch.equal(torch.rand(2), after)


def test_frozen_prefix_vit_pools_like_its_backbone():
    vit = tiny_vit(global_pool="avg", fc_norm=False)

    class Model(FrozenPrefixViT, nn.Module):
        def __init__(self):
            nn.Module.__init__(self)
            self.vit = vit

    t = torch.randn(2, 5, C)
    torch.testing.assert_close(Model().pre_logits(t), t[:, 1:].mean(dim=1))
