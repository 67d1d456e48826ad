"""``--set recipe=original-port``: L2P / DualPrompt with the original PyTorch ports' configs.

Every expected value below is read from the official config files (line numbers at the stated
commits); the project's default presets follow MoE_PromptCL instead (cl/protocol.py).
"""

from __future__ import annotations

import pytest

from cl.config import RECIPES, resolve_config
from cl.protocol import DEVIATIONS, deviation_table

PORT = {"recipe": "original-port"}

# JH-LEE-KR/l2p-pytorch @ f7bc994, configs/cifar100_l2p.py and configs/five_datasets_l2p.py:
# l.4 --batch-size 16, l.5 --epochs 5, l.18 --clip-grad 1.0, l.24 --sched constant, l.25 --lr
# 0.03, l.55 --shuffle False, l.79-81 --size/--length/--top_k, l.88 --batchwise_prompt True,
# l.92 --pull_constraint_coeff; datasets.py l.96: the test loader uses --batch-size.
L2P = {
    "cifar100": dict(pool_size=10, length=5, top_k=5, pull_coeff=0.1),
    "5datasets": dict(pool_size=20, length=10, top_k=4, pull_coeff=0.5),
}
# JH-LEE-KR/dualprompt-pytorch @ 7eb457d, configs/cifar100_dualprompt.py and
# configs/imr_dualprompt.py: l.4 --batch-size 24, l.5 --epochs 5 / 50, l.25 --lr 0.03 / 0.005,
# l.79 --g_prompt_length 5, l.80 --g_prompt_layer_idx [0, 1], l.85 --e_prompt_layer_idx
# [2, 3, 4], l.91 --length 5 / 20, l.96 --use_prompt_mask True, l.100 --batchwise_prompt
# True / False, l.104 --pull_constraint_coeff 1.0.
DUALPROMPT = {
    "cifar100": dict(epochs=5, lr=0.03, batchwise_prompt=True, e_length=5),
    "imagenet-r": dict(epochs=50, lr=0.005, batchwise_prompt=False, e_length=20),
}


@pytest.mark.parametrize("dataset", sorted(L2P))
def test_l2p_original_port_values(dataset: str) -> None:
    cfg = resolve_config(dataset, "l2p", "sup21k", overrides=PORT)
    assert cfg.recipe == "original-port"
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.epochs, cfg.lr) == (16, 16, 5, 0.03)
    o = cfg.method_options
    assert (o.scheduler, cfg.clip_grad, o.batchwise_prompt) == ("constant", 1.0, True)
    assert cfg.dataset_options["class_order"] == "standard"
    assert {k: getattr(o, k) for k in L2P[dataset]} == L2P[dataset]


@pytest.mark.parametrize("dataset", sorted(DUALPROMPT))
def test_dualprompt_original_port_values(dataset: str) -> None:
    cfg = resolve_config(dataset, "dualprompt", "sup21k", overrides=PORT)
    want = DUALPROMPT[dataset]
    assert (cfg.batch_size, cfg.eval_batch_size) == (24, 24)
    assert (cfg.epochs, cfg.lr, cfg.method_options.batchwise_prompt) == (want["epochs"], want["lr"],
                                                          want["batchwise_prompt"])
    assert (cfg.method_options.scheduler, cfg.clip_grad) == ("constant", 1.0)
    assert cfg.dataset_options["class_order"] == "standard"
    opts = cfg.method_options
    assert (opts.g_layers, opts.g_length, opts.e_layers) == ([0, 1], 5, [2, 3, 4])
    assert (opts.e_length, opts.pull_coeff, opts.prompt_mask) == (
        want["e_length"], 1.0, True)


def test_default_recipe_is_untouched_and_later_layers_still_win() -> None:
    default = resolve_config("cifar100", "l2p", "sup21k")
    assert default.recipe == "default" and RECIPES == ("default", "original-port", "hide-paper")
    assert (default.epochs, default.lr, default.method_options.pool_size) == (10, 0.005, 30)
    assert default.method_options.batchwise_prompt is False
    assert "class_order" not in default.dataset_options
    # --protocol official goes on top of the recipe; explicit overrides on top of both
    cfg = resolve_config("cifar100", "l2p", "sup21k", overrides={
        **PORT, "protocol": "official", "method_options.length": "7", "epochs": "2"})
    assert cfg.method_options.legacy_vote_ties and cfg.method_options.batchwise_prompt
    assert (cfg.method_options.length, cfg.method_options.pool_size, cfg.epochs) == (
        7, 10, 2)
    dp = resolve_config("imagenet-r", "dualprompt", "sup21k")
    assert (dp.epochs, dp.lr, dp.batch_size) == (50, 0.005, 128)


@pytest.mark.parametrize(("dataset", "method", "message"), [
    ("imagenet-r", "l2p", "l2p has configs for cifar100, 5datasets, synthetic, digits only; "
                          "got dataset 'imagenet-r'"),
    ("5datasets", "dualprompt", "dualprompt has configs for cifar100, imagenet-r only"),
    ("cub200", "l2p", "got dataset 'cub200'"),
    ("synthetic", "dualprompt", "got dataset 'synthetic'"),
    ("cifar100", "norga", "only dualprompt, l2p have one; got method 'norga'"),
    ("cifar100", "sprompt", "got method 'sprompt'"),
])
def test_recipe_without_a_port_config_is_refused(dataset: str, method: str,
                                                 message: str) -> None:
    with pytest.raises(ValueError, match="^recipe: original-port: ") as err:
        resolve_config(dataset, method, "sup21k", overrides=PORT)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_recipe_and_the_deviation_row_names_the_flag() -> None:
    with pytest.raises(ValueError,
                       match="recipe: must be one of default, original-port, hide-paper; "
                       "got 'paper'"):
        resolve_config("cifar100", "l2p", "sup21k", overrides={"recipe": "paper"})
    row = next(d for d in DEVIATIONS if d.what == "L2P / DualPrompt recipe")
    assert "`--set recipe=original-port`" in row.flag() and row.flag() in deviation_table()
    split = next(d for d in DEVIATIONS if d.what == "ImageNet-R train/test split")
    assert "`--set dataset_options.split_dir=DIR`" in split.flag()
    assert "no switch" not in split.flag()


def test_help_lists_what_the_recipe_changes_where_it_exists() -> None:
    from cl.config import describe_presets

    lines = describe_presets(width=1000).splitlines()
    port = [i for i, line in enumerate(lines) if line.strip().startswith("+original-port")]
    assert len(port) == 4  # l2p: cifar100, 5datasets; dualprompt: cifar100, imagenet-r
    owners = [lines[i - 1].split()[0] if not lines[i - 1].strip().startswith("+")
              else lines[i - 2].split()[0] for i in port]
    assert sorted(owners) == ["dualprompt", "dualprompt", "l2p", "l2p"]
    l2p_cifar = next(lines[i] for i, o in zip(port, owners, strict=True) if o == "l2p")
    assert " pool_size=10" in l2p_cifar and "epochs=5" in l2p_cifar  # options: plain names
