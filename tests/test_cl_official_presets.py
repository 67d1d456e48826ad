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

from typing import Any

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
        assert cfg.method_options.ortho_mu == 0.0
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
    assert resolve_config("5datasets", "sprompt", "sup21k").method_options.pull_coeff == 0.5
    assert resolve_config("5datasets", "sprompt", "ibot21k").method_options.pull_coeff == 0.5
    assert resolve_config("cifar100", "sprompt", "sup21k").method_options.pull_coeff == 1.0


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


# ---------------------------------------------------------------- the audit table (issue 23)
# Official values with their sources, read in the official repositories at MoE_PromptCL e418337
# (MoE), thu-ml/HiDe-Prompt 0ed4333 (thu), GT-RIPL/CODA-Prompt 6417d4f (CODA), SMoPE 27b982c,
# JH-LEE-KR/l2p-pytorch f7bc994 and dualprompt-pytorch 7eb457d. A value is a config field
# (``method_options.x`` / ``dataset_options.x`` for an entry of those dicts) or, with ``class:``,
# an attribute of the method class.

# Every (method, paper dataset) default, Sup-21K: MoE_PromptCL's Sup-21K script (its line) or,
# where the script passes nothing, its config's default (the config line); CODA-Prompt and
# SMoPE: their configs (yaml line) and scripts.
DEFAULTS: dict[tuple[str, str], tuple[dict[str, Any], str]] = {
    ("norga", "cifar100"): (dict(epochs=50, batch_size=128, lr=0.03, scheduler="step",
                                 prompt_length=5, gate_act="sigmoid", ca_lr=0.05, tii_epochs=20,
                                 tii_lr=5e-4, tii_scheduler="constant", stats_method="covariance"),
                            "MoE scripts/cifar100_Sup21k_NoRGa.sh l.6-14 (TII), l.22-35"),
    ("norga", "imagenet-r"): (dict(epochs=150, batch_size=128, scheduler="cosine",
                                   prompt_length=20, reg=0.5, gate_act="sigmoid", tii_epochs=20),
                              "MoE scripts/imr_Sup21k_NoRGa.sh l.13, l.22-32"),
    ("norga", "cub200"): (dict(epochs=50, batch_size=128, larger_prompt_lr=False, reg=0.01,
                               tii_lr=0.01, tii_scheduler="constant", tii_epochs=20),
                          "MoE scripts/cub_Sup21k_NoRGa.sh l.9-14, l.23-32 (no "
                          "--larger_prompt_lr)"),
    ("norga", "5datasets"): (dict(epochs=20, batch_size=128, clip_grad=2.0, gate_act="tanh",
                                  tii_lr=1e-3, tii_mlp=[4, 4], tii_epochs=20),
                             "MoE scripts/5datasets_Sup21k_NoRGa.sh l.13-14, l.26-38; "
                             "configs/five_datasets_norgaprompt.py --original_model_mlp_structure"),
    **{("hide", d): (dict(batch_size=128, tap_epochs=30, ca_lr=0.005, tii_epochs=20,
                          stats_method="covariance"),
                     "MoE scripts/*_Sup21k_HiDe.sh (l.6: batch 128, --crct_epochs 30, "
                     "--ca_lr 0.005, --ca_storage_efficient_method covariance)")
       for d in ("cifar100", "imagenet-r", "cub200", "5datasets")},
    ("l2p", "cifar100"): (dict(epochs=10, lr=0.005, batch_size=128, scheduler="constant",
                               **{"method_options.pool_size": 30, "method_options.top_k": 5}),
                          "MoE configs/cifar100_l2p.py l.6, 31, 33, 113-115; "
                          "scripts/cifar100_Sup21k_l2p.sh l.6"),
    ("l2p", "imagenet-r"): (dict(epochs=50, lr=0.005, scheduler="constant"),
                            "MoE configs/imr_l2p.py l.5, 26, 27"),
    ("l2p", "cub200"): (dict(epochs=50, scheduler="step"), "MoE configs/cub_l2p.py l.6, 31"),
    ("l2p", "5datasets"): (dict(epochs=40, **{"method_options.pool_size": 20,
                                              "method_options.length": 10,
                                              "method_options.top_k": 4}),
                           "MoE scripts/5datasets_Sup21k_l2p.sh l.10; "
                           "configs/five_datasets_l2p.py l.112-114"),
    ("dualprompt", "cifar100"): (dict(epochs=20, lr=0.005, scheduler="constant",
                                      **{"method_options.e_length": 20,
                                         "method_options.e_layers": [2, 3, 4]}),
                                 "MoE configs/cifar100_dualprompt.py l.5, 25-26, 86, 92"),
    ("dualprompt", "imagenet-r"): (dict(epochs=50), "MoE configs/imr_dualprompt.py l.5"),
    ("dualprompt", "cub200"): (dict(epochs=50, scheduler="step"),
                               "MoE configs/cub_dualprompt.py l.6, 31"),
    ("dualprompt", "5datasets"): (dict(epochs=40, **{"method_options.g_length": 10,
                                                     "method_options.e_length": 40}),
                                  "MoE scripts/5datasets_Sup21k_dual.sh l.10; "
                                  "configs/five_datasets_dualprompt.py l.97, 113"),
    ("sprompt", "cifar100"): (dict(epochs=20, lr=0.005, batch_size=128),
                              "MoE scripts/cifar100_Sup21k_sprompt.sh (no --epochs, l.6 batch); "
                              "configs/cifar100_sprompt_5e.py l.6, 33"),
    ("sprompt", "imagenet-r"): (dict(epochs=50), "MoE configs/imr_sprompt_5e.py l.6"),
    ("sprompt", "cub200"): (dict(epochs=50, scheduler="step"),
                            "MoE scripts/cub_Sup21k_sprompt.sh l.10; configs/cub_sprompt_5e.py "
                            "l.31"),
    ("sprompt", "5datasets"): (dict(epochs=40, **{"method_options.e_length": 40}),
                               "MoE scripts/5datasets_Sup21k_sprompt.sh l.10; "
                               "configs/five_datasets_sprompt_5e.py l.113"),
    ("coda-prompt", "cifar100"): (dict(epochs=20, lr=1e-3, batch_size=128),
                                  "CODA configs/cifar-100_prompt.yaml l.4-5, 7, 9"),
    ("coda-prompt", "imagenet-r"): (dict(epochs=50, lr=1e-3, batch_size=128),
                                    "CODA configs/imnet-r_prompt.yaml l.4-5, 7, 9"),
    ("smope", "cifar100"): (dict(batch_size=128, lr=0.005),
                            "SMoPE configs/cifar-100_prompt_smope.yaml l.9, 11"),
    ("smope", "imagenet-r"): (dict(batch_size=64, lr=0.0025),
                              "SMoPE configs/imnet-r_prompt_smope.yaml l.9, 11"),
}

OFF = {"protocol": "official"}
HIDE_PAPER = {"recipe": "hide-paper"}
PORT = {"recipe": "original-port"}
# (method, dataset, overrides, field, official value)
Check = tuple[str, str, dict[str, Any], str, Any]
# Every row of cl.protocol.DEVIATIONS (by its ``what``): its official source and the values that
# ``--protocol official`` (or the row's recipe) must give.
OFFICIAL: dict[str, tuple[str, list[Check]]] = {
    "prefix key/value pairing": (
        "MoE peft/prompt/norga_prompt.py l.108-140 and dp_prompt.py l.124-136: reshape of "
        "(L, 2, B, ...) to (L, B, 2, ...) without a transpose",
        [(m, "cifar100", OFF, "legacy_kv_reshape", True)
         for m in ("hide", "norga", "dualprompt", "sprompt")]),
    "batch-majority prompt vote": (
        "MoE configs/cifar100_l2p.py l.123, imr_l2p.py l.102, five_datasets_l2p.py l.121 True; "
        "cifar100_sprompt_5e.py l.123 "
        "True, imr_sprompt_5e.py l.123 False; five_datasets_{dualprompt,sprompt_5e}.py l.121 and "
        "five_datasets_norgaprompt.py l.123 True; cifar100_dualprompt.py l.101 False",
        [("l2p", "cifar100", OFF, "batchwise_prompt", True),
         ("l2p", "imagenet-r", OFF, "batchwise_prompt", True),
         ("sprompt", "cifar100", OFF, "batchwise_prompt", True),
         ("sprompt", "imagenet-r", OFF, "batchwise_prompt", False),
         ("sprompt", "5datasets", OFF, "batchwise_prompt", True),
         ("dualprompt", "5datasets", OFF, "batchwise_prompt", True),
         ("dualprompt", "cifar100", OFF, "batchwise_prompt", False),
         ("norga", "5datasets", OFF, "batchwise_prompt", True),
         ("hide", "5datasets", OFF, "batchwise_prompt", True),
         ("norga", "cifar100", OFF, "batchwise_prompt", False)]),
    "batch-vote tie order": (
        "MoE peft/prompt/dp_prompt.py l.100 (torch.unique), l.107 (torch.topk of the counts)",
        [(m, "5datasets", OFF, "legacy_vote_ties", True)
         for m in ("hide", "norga", "l2p", "dualprompt", "sprompt")]),
    "key-matching scope": (
        "MoE peft/prompt/dp_prompt.py l.93-96: similarity to every key of the pool, top-k",
        [(m, "cifar100", OFF, "method_options.match_all_keys", True)
         for m in ("dualprompt", "sprompt")]),
    "last partial training batch": (
        "CODA trainer.py l.185, SMoPE trainer.py l.254: DataLoader(..., drop_last=True)",
        [(m, "cifar100", OFF, "legacy_drop_last", True) for m in ("coda-prompt", "smope")]),
    "5-Datasets transform leak": (
        "MoE datasets.py l.34-37 and l.69-70: the CIFAR transform replaces the shared one when "
        "CIFAR10 is reached and is never reset",
        [(m, "5datasets", OFF, "dataset_options.legacy_transform_leak", True)
         for m in ("hide", "norga", "l2p", "dualprompt", "sprompt")]),
    "CODA-Prompt / SMoPE data transforms": (
        "CODA dataloaders/utils.py l.28-59 get_transform: RandomResizedCrop(224) l.44, test "
        "Resize(256) l.52 / Resize(224) l.59; SMoPE the same file",
        [(m, d, OFF, "dataset_options.transforms", "coda") for m in ("coda-prompt", "smope")
         for d in ("cifar100", "imagenet-r", "cub200")]),
    "CODA-Prompt / SMoPE backbone": (
        "CODA models/zoo.py: timm vit_base_patch16_224(pretrained=True); SMoPE models/zoo.py "
        "sup1k default; not a config switch, the backbone is --backbone",
        [(m, "cifar100", OFF, "backbone", "sup21k") for m in ("coda-prompt", "smope")]),
    "SMoPE frequent-expert flags": (
        "SMoPE models/zoo.py l.58-70: mean over the experts with a non-zero count, flags only "
        "ever set",
        [("smope", "cifar100", OFF, "method_options.legacy_frequency_flags", True)]),
    "SMoPE router-loss scale": (
        "SMoPE models/vit.py l.121-134: the proxy score is not multiplied by the scale",
        [("smope", "cifar100", OFF, "method_options.legacy_unscaled_router", True)]),
    "SMoPE coswm schedule length": (
        "SMoPE configs/cifar-100_prompt_smope.yaml l.4-5 (80), imnet-r_prompt_smope.yaml l.4-5 "
        "(40), iter_step l.14 (40); learners/prompt.py l.119 freeze_iters = schedule[0]",
        [("smope", "cifar100", OFF, "method_options.freeze_iters", 80),
         ("smope", "imagenet-r", OFF, "method_options.freeze_iters", 40),
         ("smope", "cifar100", OFF, "method_options.iter_step", 40),
         ("smope", "imagenet-r", OFF, "method_options.iter_step", 40)]),
    "SMoPE first scheduler steps": (
        "SMoPE utils/schedulers.py l.70-88, l.133-151: the constructor sets the group lrs",
        [("smope", "cifar100", OFF, "method_options.legacy_scheduler_quirks", True)]),
    "SMoPE statistics transform": (
        "SMoPE learners/prompt.py l.405-421, trainer.py l.447-469: statistics on the training "
        "loader",
        [("smope", "cifar100", OFF, "method_options.legacy_stats_train_transform", True)]),
    "L2P / DualPrompt recipe": (
        "l2p-pytorch configs/cifar100_l2p.py l.4-5, 25, 55; dualprompt-pytorch "
        "configs/cifar100_dualprompt.py l.4-5, 25, 55; both datasets.py l.37-38, l.195-216 "
        "(one transform pair for every dataset)",
        [("l2p", "cifar100", PORT, "batch_size", 16), ("l2p", "cifar100", PORT, "epochs", 5),
         ("l2p", "cifar100", PORT, "lr", 0.03),
         ("l2p", "cifar100", PORT, "dataset_options.class_order", "standard"),
         ("l2p", "cifar100", PORT, "dataset_options.transforms", "port"),
         ("l2p", "5datasets", PORT, "dataset_options.transforms", "port"),
         ("dualprompt", "cifar100", PORT, "batch_size", 24),
         ("dualprompt", "cifar100", PORT, "epochs", 5),
         ("dualprompt", "imagenet-r", PORT, "lr", 0.005),
         ("dualprompt", "cifar100", PORT, "dataset_options.transforms", "port"),
         ("dualprompt", "imagenet-r", PORT, "dataset_options.transforms", "port"),
         ("l2p", "cifar100", OFF, "recipe", "default")]),  # not part of --protocol official
    "ImageNet-R train/test split": (
        "MoE continual_datasets/continual_datasets.py l.658: torch.utils.data.random_split of "
        "the first run; CODA dataloaders/splits/imagenet-r_{train,test}.yaml",
        [(m, "imagenet-r", OFF, "dataset_options.split", "hide")
         for m in ("hide", "norga", "l2p", "dualprompt", "sprompt")]),
    "multi-centroid statistics per engine": (
        "MoE engines/hide_tii_engine.py l.334, 353-364 (n per cluster), "
        "engines/norga_tii_engine.py l.342 and norga_prompt_engine.py l.634 (n // n_centroids), "
        "KMeans(n_init='auto') hide_tii_engine.py l.199, norga_tii_engine.py l.199; thu "
        "engines/hide_tii_engine.py l.189 KMeans(n_clusters) with scikit-learn 1.0.2 "
        "(requirements.txt l.9): 10 restarts",
        [("hide", "cifar100", {}, "class:centroid_split_budget", False),
         ("norga", "cifar100", {}, "class:centroid_split_budget", True),
         ("norga", "cifar100", OFF, "kmeans_n_init", 1),
         ("hide", "cifar100", OFF, "kmeans_n_init", 1),
         ("hide", "cifar100", HIDE_PAPER, "kmeans_n_init", 10)]),
    "HiDe-Prompt / S-Prompt++ recipe": (
        "thu training_scripts/train_cifar100_vit.sh l.6, 11, 30; train_5datsets_vit.sh l.6, 11, "
        "28; configs/cifar100_hideprompt_5e.py l.74 (shuffle False), l.151-152; "
        "configs/cifar100_sprompt_5e.py l.5-6, 33, five_datasets_sprompt_5e.py l.5-6, 32, "
        "imr_sprompt_5e.py l.5-6, 33; MoE scripts/cifar100_Sup21k_sprompt.sh (20 epochs) and "
        "scripts/cifar100_sprompt.sh l.10 (40)",
        [("hide", "cifar100", HIDE_PAPER, "batch_size", 24),
         ("hide", "cifar100", HIDE_PAPER, "eval_batch_size", 24),
         ("hide", "5datasets", HIDE_PAPER, "batch_size", 32),
         ("hide", "imagenet-r", HIDE_PAPER, "stats_method", "multi-centroid"),
         ("hide", "cub200", HIDE_PAPER, "n_centroids", 10),
         ("hide", "cifar100", HIDE_PAPER, "dataset_options.class_order", "standard"),
         ("hide", "cifar100", HIDE_PAPER, "epochs", 50),
         ("hide", "cifar100", HIDE_PAPER, "lr", 0.03),
         ("sprompt", "cifar100", HIDE_PAPER, "epochs", 5),
         ("sprompt", "cifar100", HIDE_PAPER, "lr", 0.03),
         ("sprompt", "cifar100", HIDE_PAPER, "batch_size", 24),
         ("sprompt", "imagenet-r", HIDE_PAPER, "lr", 0.005),
         ("sprompt", "imagenet-r", HIDE_PAPER, "epochs", 50),
         ("sprompt", "5datasets", HIDE_PAPER, "batch_size", 16),
         ("sprompt", "5datasets", HIDE_PAPER, "dataset_options.class_order", "standard"),
         ("sprompt", "cifar100", {}, "epochs", 20),
         ("hide", "cifar100", OFF, "batch_size", 128)]),  # not part of --protocol official
    "CODA-Prompt class order": (
        "CODA experiments/cifar-100.sh l.13 and imagenet-r.sh l.12 (REPEAT=1), run.py l.126 "
        "(seed = repeat index 0), trainer.py l.59-67 (shuffled only for seed > 0), "
        "configs/cifar-100_prompt.yaml l.19 rand_split True",
        [("coda-prompt", d, OFF, "dataset_options.class_order", "standard")
         for d in ("cifar100", "imagenet-r")]),
    "CODA-Prompt 5-Datasets pool size": (
        "CODA experiments/cifar-100.sh l.29, imagenet-r.sh l.28 (--prompt_param 100 8 0.0); "
        "models/zoo.py l.44 (pool), l.99 (pool / n_tasks per task): 100 / 5 tasks",
        [("coda-prompt", "5datasets", OFF, "method_options.pool_per_task", 20),
         ("coda-prompt", "cifar100", OFF, "method_options.pool_per_task", 10)]),
    "before-alignment matrix, row 0": (
        "MoE engines/norga_prompt_engine.py l.211 (np.zeros), l.391-398 (evaluated for "
        "task_id > 0 only); hide_promtp_wtp_and_tap_engine.py l.204, l.331-338",
        [(m, "cifar100", OFF, "legacy_before_alignment_row0", True) for m in ("hide", "norga")]),
}


def _value(method: str, dataset: str, overrides: dict[str, Any], name: str) -> Any:
    if name.startswith("class:"):
        return getattr(get_method(method), name.removeprefix("class:"))
    cfg = resolve_config(dataset, method, "sup21k", overrides=overrides)
    head, _, key = name.partition(".")
    if head == "method_options":  # the method's typed options, its defaults filled in
        return getattr(cfg.method_options, key)
    if not hasattr(cfg, head):  # an option given by its plain name
        return getattr(cfg.method_options, head)
    value = getattr(cfg, head)
    return value[key] if key else value


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_default_has_the_official_value(key: tuple[str, str]) -> None:
    method, dataset = key
    values, source = DEFAULTS[key]
    got = {name: _value(method, dataset, {}, name) for name in values}
    assert got == values, source


def test_the_defaults_table_covers_every_method_on_its_official_benchmarks() -> None:
    from cl.methods import available_methods

    assert {m for m, _ in DEFAULTS} == set(available_methods())
    for method in ("hide", "norga", "l2p", "dualprompt", "sprompt"):  # MoE_PromptCL's four
        assert {d for m, d in DEFAULTS if m == method} == {"cifar100", "imagenet-r", "cub200",
                                                           "5datasets"}


def test_every_deviation_row_is_checked_against_its_official_source() -> None:
    from cl.protocol import DEVIATIONS

    assert [d.what for d in DEVIATIONS] == list(OFFICIAL)
    for deviation in DEVIATIONS:
        source, checks = OFFICIAL[deviation.what]
        assert source and checks, deviation.what
        # every method a row concerns is checked, every switching row by its own setting
        assert {c[0] for c in checks} >= set(deviation.settings), deviation.what


@pytest.mark.parametrize("what", list(OFFICIAL))
def test_official_protocol_and_recipes_give_the_official_values(what: str) -> None:
    source, checks = OFFICIAL[what]
    for method, dataset, overrides, name, expected in checks:
        assert _value(method, dataset, overrides, name) == expected, (method, dataset, name,
                                                                      source)
