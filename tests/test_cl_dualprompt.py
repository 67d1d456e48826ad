"""DualPrompt: G/E prefix placement (which blocks get which prompt, K/V pairing), prompt mask,
end to end, resume, batch invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prompt_baseline_checks import (
    check_batch_invariance,
    check_batchwise_vote_leaks,
    check_cli_quick_run,
    check_resume,
    learnable_on_vit_b16,
    learned_method,
)

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.methods import Task, get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def manual_prefix_vit(vit, x: torch.Tensor, prefix_of_layer: dict) -> torch.Tensor:
    """Textbook ViT forward; block ``l`` attends over ``[P_K; k]`` / ``[P_V; v]`` if prefixed.

    ``prefix_of_layer[l][b]`` is sample ``b``'s ``(key, value)`` pair, each ``(L, H, D)``.
    """
    B = x.shape[0]
    h = torch.cat([vit.cls_token.expand(B, -1, -1), vit.patch_embed(x)], dim=1) + vit.pos_embed
    for layer, block in enumerate(vit.blocks):
        a = block.norm1(h)
        heads = block.attn.num_heads
        N, C = a.shape[1], a.shape[2]
        D = C // heads
        qkv = (a @ block.attn.qkv.weight.T + block.attn.qkv.bias).reshape(B, N, 3, heads, D)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, D)
        if layer in prefix_of_layer:
            pk = torch.stack([p[0] for p in prefix_of_layer[layer]]).permute(0, 2, 1, 3)
            pv = torch.stack([p[1] for p in prefix_of_layer[layer]]).permute(0, 2, 1, 3)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        attn = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        h = h + block.attn.proj(out)
        h = h + block.mlp(block.norm2(h))
    return vit.norm(h)[:, 0]


def _method(name: str, seed: int = 4, **options):
    cfg = resolve_config("synthetic", name, overrides={
        "seed": seed, "attention": "reference", "method_options": options})
    vit = build_backbone("vit-tiny-random", img_size=32, seed=seed).model
    task_classes = [[0, 1], [2, 3], [4, 5], [6, 7]]
    method = get_method(name)(cfg, vit, 8, task_classes)
    return method, task_classes


def test_g_prompt_in_blocks_0_1_and_e_prompt_in_blocks_2_4() -> None:
    method, _ = _method("dualprompt", g_length=3, e_length=4)
    model = method.model
    assert model.g_prompt.shape == (2, 2, 3, 4, 32)  # (G layers, K/V, L_g, H, D)
    assert model.e_prompt.shape == (3, 2, 4, 4, 4, 32)  # (E layers, K/V, pool, L_e, H, D)
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        block.attn.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: seen.__setitem__(i, kwargs.get("prefix")),
            with_kwargs=True)
        for i, block in enumerate(model.vit.blocks)
    ]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    e_ids = torch.tensor([2, 0, 3, 2])
    model.features(x, e_ids)
    for hook in hooks:
        hook.remove()
    assert [i for i in range(6) if seen.get(i) is not None] == [0, 1, 2, 3, 4]
    for b, task in enumerate(e_ids.tolist()):
        for j, layer in enumerate((0, 1)):
            torch.testing.assert_close(seen[layer][b, 0], model.g_prompt[j, 0])  # key
            torch.testing.assert_close(seen[layer][b, 1], model.g_prompt[j, 1])  # value
        for j, layer in enumerate((2, 3, 4)):
            torch.testing.assert_close(seen[layer][b, 0], model.e_prompt[j, 0, task])
            torch.testing.assert_close(seen[layer][b, 1], model.e_prompt[j, 1, task])


@pytest.mark.parametrize("attention", ["reference", "fused"])
def test_features_equal_textbook_prefix_attention(attention: str) -> None:
    method, _ = _method("dualprompt", g_length=3, e_length=4)
    model = method.model
    model.set_fused(attention == "fused")
    reference = build_backbone("vit-tiny-random", img_size=32, seed=4).model  # untouched copy
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    e_ids = torch.tensor([1, 3, 0, 1, 2])
    g, e = model.g_prompt.detach(), model.e_prompt.detach()
    prefixes = {layer: [(g[j, 0], g[j, 1])] * 5 for j, layer in enumerate((0, 1))}
    for j, layer in enumerate((2, 3, 4)):
        prefixes[layer] = [(e[j, 0, t], e[j, 1, t]) for t in e_ids.tolist()]
    with torch.no_grad():
        want = manual_prefix_vit(reference, x, prefixes)
        got = model.features(x, e_ids)
        query = model.query(x)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    # the query is the prompt-free [CLS] feature of the frozen ViT
    torch.testing.assert_close(query, reference.forward_features(x)[:, 0], rtol=0, atol=1e-5)


def test_training_uses_the_task_prompt_initialised_from_the_previous_one() -> None:
    method, task_classes = _method("dualprompt", g_length=3, e_length=4)
    model = method.model
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 3, 32, 32, generator=g), torch.tensor([2, 3, 2, 3, 3, 2])
    method.begin_task(Task(0, task_classes[0], task_classes))
    method.begin_task(Task(1, task_classes[1], task_classes))
    torch.testing.assert_close(model.e_prompt[:, :, 1], model.e_prompt[:, :, 0])
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    method.train_task([(x, y)])
    after = dict(model.named_parameters())
    changed = lambda name, idx=(): not torch.equal(before[name][idx], after[name][idx])  # noqa: E731
    assert changed("g_prompt") and changed("head.weight")
    assert changed("e_prompt", (slice(None), slice(None), 1)) and changed("key", 1)
    for t in (0, 2, 3):  # other tasks' prompts and keys are untouched
        assert not changed("e_prompt", (slice(None), slice(None), t)) and not changed("key", t)


def test_kv_pairing_default_and_legacy_reshape() -> None:
    method, _ = _method("dualprompt")
    ids = torch.tensor([0, 1, 2])
    prefix = method.model.layer_prefixes(ids)[2]
    torch.testing.assert_close(prefix[1, 1], method.model.e_prompt[0, 1, 1])  # V of sample 1
    legacy, _ = _method("dualprompt")
    legacy.model.legacy_kv_reshape = True
    bad = legacy.model.layer_prefixes(ids)[2]
    # the original bug: sample 1 gets the *key* prompt of sample 2 as its key prefix
    torch.testing.assert_close(bad[1, 0], legacy.model.e_prompt[0, 0, 2])


def test_cli_quick_run_writes_the_run_directory(tmp_path: Path) -> None:
    metrics = check_cli_quick_run("dualprompt", tmp_path)
    assert 0.0 <= metrics["TII_accuracy"] <= 100.0


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    check_resume("dualprompt", tmp_path)


@pytest.mark.slow
def test_batch_size_and_composition_invariance() -> None:
    check_batch_invariance("dualprompt")


def test_batchwise_vote_is_batch_dependent() -> None:
    check_batchwise_vote_leaks("dualprompt")


def test_presets() -> None:
    cfg = resolve_config("imagenet-r", "dualprompt", "sup21k")
    assert (cfg.epochs, cfg.lr, cfg.method_options.scheduler) == (50, 0.005, "constant")
    assert cfg.method_options.to_dict().items() >= {
        "g_layers": [0, 1], "g_length": 5, "e_layers": [2, 3, 4],
                                  "e_length": 20, "pull_coeff": 1.0}.items()
    cfg = resolve_config("5datasets", "dualprompt", "sup21k")
    assert cfg.method_options.e_length == 40 and cfg.method_options.g_length == 10
    assert cfg.method_options.pull_coeff == 0.5
    method, _ = learned_method("dualprompt")
    assert method.model.e_prompt.shape[2] == 4  # one E-prompt per task


def test_parameter_count_on_vit_b16() -> None:
    """ImageNet-R: G (2, 2, 5, 12, 64), E (3, 2, 10, 20, 12, 64), keys 10 x 768, head 200.

    The total, 1.098M, is the "1.10M" of DualPrompt on the SMoPE poster.
    """
    counts = learnable_on_vit_b16("dualprompt", "imagenet-r", 200, 10)
    assert counts == {"g_prompt": 2 * 2 * 5 * 12 * 64, "e_prompt": 3 * 2 * 10 * 20 * 12 * 64,
                      "key": 10 * 768, "head.weight": 768 * 200, "head.bias": 200}
    assert round(sum(counts.values()) / 1e6, 2) == 1.10
