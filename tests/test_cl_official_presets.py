"""Baseline presets equal the official values (issue 19, point 1), each with its source.

Sources (read in the official repositories at the commits of docs/cl-background.md#sources):

* GT-RIPL/CODA-Prompt @ 6417d4f, ``experiments/cifar-100.sh`` line 29:
  ``--prompt_param 100 8 0.0`` (the comment above it: "arg 3 = ortho penalty loss weight - with
  updated code, now can be 0!").
* Minhchuyentoancbn/MoE_PromptCL @ e418337, ``scripts/5datasets_iBOT21k_{l2p,dual,sprompt}.sh``
  pass no ``--epochs``, so the configs' ``--epochs`` default 20 applies
  (``configs/five_datasets_{l2p,dualprompt,sprompt_5e}.py`` line 6); the Sup-21K scripts pass
  ``--epochs 40`` (``scripts/5datasets_Sup21k_{l2p,dual,sprompt}.sh`` line 10).
* MoE_PromptCL ``configs/five_datasets_sprompt_5e.py`` line 125:
  ``--pull_constraint_coeff`` default 0.5.
* MoE_PromptCL ``vits/dp_vision_transformer.py``: lines 473/476 build ``norm = Identity`` and
  ``fc_norm = norm_layer(embed_dim)`` when ``fc_norm=True`` (``vit_base_patch16_224_mocov3``,
  line 1373), line 630 applies ``fc_norm`` before the head; ``trainers/dp_trainer.py`` line 61
  freezes names starting with ``blocks, patch_embed, cls_token, norm, pos_embed``
  (``configs/cifar100_l2p.py`` line 135), which ``fc_norm`` does not match: it is trained.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cl.config import resolve_config
from cl.methods import Task, get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYED = ("l2p", "dualprompt", "sprompt")


def test_coda_cifar100_ortho_mu_is_the_official_zero() -> None:
    """CODA-Prompt ``experiments/cifar-100.sh`` l.29: ``--prompt_param 100 8 0.0`` (was 0.1)."""
    for backbone in ("sup21k", "ibot21k", "sup21k-ft1k"):
        cfg = resolve_config("cifar100", "coda-prompt", backbone)
        assert cfg.method_options["ortho_mu"] == 0.0
        assert (cfg.epochs, cfg.lr, cfg.batch_size) == (20, 1e-3, 128)


@pytest.mark.parametrize("method", KEYED)
def test_5datasets_epochs_are_20_with_ibot21k_and_40_with_sup21k(method: str) -> None:
    """MoE_PromptCL ``scripts/5datasets_iBOT21k_*.sh``: no ``--epochs`` -> config default 20
    (``configs/five_datasets_*.py`` l.6); ``scripts/5datasets_Sup21k_*.sh`` l.10: 40."""
    assert resolve_config("5datasets", method, "ibot21k").epochs == 20
    assert resolve_config("5datasets", method, "sup21k").epochs == 40


def test_sprompt_5datasets_pull_coeff_is_half() -> None:
    """MoE_PromptCL ``configs/five_datasets_sprompt_5e.py`` l.125: ``pull_constraint_coeff``
    0.5 (was 1.0); the other datasets keep 1.0 (``configs/*_sprompt_5e.py``)."""
    assert resolve_config("5datasets", "sprompt", "sup21k").method_options["pull_coeff"] == 0.5
    assert resolve_config("5datasets", "sprompt", "ibot21k").method_options["pull_coeff"] == 0.5
    assert resolve_config("cifar100", "sprompt", "sup21k").method_options["pull_coeff"] == 1.0


def _tiny_vit(fc_norm: bool) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=5, num_heads=2,
                            mlp_ratio=2.0, num_classes=0, fc_norm=fc_norm, global_pool="token")
    return vit.eval()


def _keyed(method: str, fc_norm: bool):
    # L2P has no prefix attention: it refuses an attention setting it would ignore
    attention = {"attention": "reference"} if method != "l2p" else {}
    cfg = resolve_config("synthetic", method, overrides={
        **attention, "method_options": {"e_length": 2} if method != "l2p" else
        {"pool_size": 4, "length": 2, "top_k": 2}})
    classes = [[0, 1], [2, 3]]
    m = get_method(method)(cfg, _tiny_vit(fc_norm), 4, classes)
    m.begin_task(Task(0, classes[0], classes))
    return m


@pytest.mark.parametrize("method", KEYED)
def test_mocov3_backbone_gets_a_trainable_fc_norm(method: str) -> None:
    """With an ``fc_norm=True`` ViT (MoCo v3) the head sees ``LayerNorm(CLS)`` and the LayerNorm
    is trained (MoE_PromptCL dp_vision_transformer.py l.476/630, dp_trainer.py l.61)."""
    m = _keyed(method, fc_norm=True)
    ln = m.model.fc_norm
    assert isinstance(ln, nn.LayerNorm) and ln.eps == 1e-6
    trained = {id(p) for g in m.optimizer.param_groups for p in g["params"]}
    assert {id(ln.weight), id(ln.bias)} <= trained
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
        ids = m.select(x)
        feats = m._features(x, ids)
        mean, var = feats.mean(-1, keepdim=True), feats.var(-1, unbiased=False, keepdim=True)
        normed = (feats - mean) / torch.sqrt(var + 1e-6) * ln.weight + ln.bias
        want = normed @ m.model.head.weight.T + m.model.head.bias
    torch.testing.assert_close(m.predict(x), want, rtol=1e-5, atol=1e-5)
    before = ln.weight.detach().clone()
    loader = [(x, torch.tensor([0, 1, 0, 1, 0, 1]))]
    m.train_task(loader)
    assert not torch.equal(before, ln.weight.detach())
    assert "model" in m.state_dict() and any(k.startswith("fc_norm.")
                                             for k in m.state_dict()["model"])


@pytest.mark.parametrize("method", KEYED)
def test_other_backbones_keep_an_identity_fc_norm(method: str) -> None:
    m = _keyed(method, fc_norm=False)
    assert isinstance(m.model.fc_norm, nn.Identity)
