"""Mechanics that follow the official code (issue 23): the multi-centroid sample counts of each
method's engine, ``--epochs`` vs ``--tii-epochs``, the before-alignment matrix's row 0 and the
L2P / DualPrompt ports' single transform (the TII adapter's init: ``test_cl_tii_init.py``).

Sources are cited next to each test (MoE_PromptCL e418337, thu-ml/HiDe-Prompt 0ed4333,
JH-LEE-KR/dualprompt-pytorch 7eb457d).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl.backbones.loading import build_backbone
from cl.cli import _config_error, build_parser, overrides_from_args
from cl.config import resolve_config
from cl.data.realdata import RealDataOptions
from cl.data.transforms import build_transforms, family_kind
from cl.errors import ConfigError
from cl.methods import get_method
from cl.metrics import summarize
from cl.run.engine import _before_alignment_row

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- centroids
def _clusters(rng: np.random.Generator, centres: int, size: int, lone: bool,
              dim: int) -> np.ndarray:
    """``centres`` tight groups of ``size`` points far apart on a line (k-means finds them),
    plus one lone point (a zero-variance cluster) if ``lone``."""
    groups = [100.0 * (j + 1) + rng.normal(0, 0.1, size=(size, dim)) for j in range(centres)]
    if lone:
        groups.append(np.full((1, dim), -1000.0))
    return np.concatenate(groups)


@pytest.mark.slow
@pytest.mark.parametrize("method,per_cluster", [("hide", 128), ("norga", 12)])
def test_multi_centroid_samples_follow_each_methods_engine(method: str, per_cluster: int) -> None:
    """HiDe-Prompt's engines draw n = batch_size from every cluster (MoE_PromptCL
    engines/hide_tii_engine.py l.334, 353-364); NoRGa's draw n // n_centroids (norga_tii_engine.py
    l.342, norga_prompt_engine.py l.634). Class 0: 10 clusters; class 1: 9 clusters and a lone
    point, whose zero-variance cluster is skipped by both."""
    cfg = resolve_config("synthetic", method, overrides={
        "stats_method": "multi-centroid", "n_centroids": 10, "batch_size": 128})
    vit = build_backbone("vit-tiny-random", img_size=16, seed=0).model
    m = get_method(method)(cfg, vit, 4, [[0, 1], [2, 3]])
    rng = np.random.default_rng(0)
    for stats in (m.tii_stats, m.prompt_stats):
        assert stats.n_init == 1  # MoE_PromptCL: KMeans(n_init='auto'), one k-means++ run
        a = _clusters(rng, 10, 3, lone=False, dim=stats.dim)
        b = _clusters(rng, 9, 3, lone=True, dim=stats.dim)
        x = torch.from_numpy(np.concatenate([a, b]))
        y = torch.tensor([0] * len(a) + [1] * len(b))
        stats.update(x, y)
        feats, labels = stats.sample([0, 1], cfg.batch_size, torch.Generator().manual_seed(0))
        assert labels.tolist() == [0] * (10 * per_cluster) + [1] * (9 * per_cluster)
        assert float(feats.min()) > -500  # nothing drawn around the lone point
    # thu-ml/HiDe-Prompt (recipe=hide-paper): scikit-learn 1.0.2's default KMeans, 10 restarts,
    # reaches both statistics of the method
    paper = resolve_config("cifar100", "hide", "sup21k", overrides={"recipe": "hide-paper"})
    built = get_method("hide")(paper, vit, 4, [[0, 1], [2, 3]])
    for stats in (built.tii_stats, built.prompt_stats):
        assert (stats.method, stats.n_init, stats.split_budget) == ("multi-centroid", 10, False)


# ---------------------------------------------------------------------------- epochs flags
def _cfg(argv: list[str]):
    parser = build_parser()
    args = parser.parse_args(["--dataset", "cifar100", *argv])
    return resolve_config("cifar100", args.method, "sup21k",
                          overrides=overrides_from_args(args, parser))


@pytest.mark.slow
def test_epochs_sets_the_prompt_stage_only_and_tii_epochs_the_tii_stage() -> None:
    """The official scripts set the TII run's epochs apart (MoE_PromptCL
    scripts/cifar100_Sup21k_NoRGa.sh l.14: 20; l.23: prompt stage 50)."""
    base = _cfg(["--method", "norga"])
    assert (base.epochs, base.method_options.tii_epochs) == (50, 20)
    more = _cfg(["--method", "norga", "--epochs", "7"])
    assert (more.epochs, more.method_options.tii_epochs) == (7, 20)
    assert more.method_options.tii_ca_epochs == base.method_options.tii_ca_epochs
    assert more.method_options.tap_epochs == base.method_options.tap_epochs
    tii = _cfg(["--method", "hide", "--tii-epochs", "3"]).to_dict()
    plain = _cfg(["--method", "hide"]).to_dict()
    assert tii["method_options"] == {**plain["method_options"], "tii_epochs": 3}
    assert {k: v for k, v in tii.items() if k != "method_options"} \
        == {k: v for k, v in plain.items() if k != "method_options"}
    help_text = build_parser().format_help()
    assert "--tii-epochs" in help_text and "prompt / main training stage only" in help_text


def test_tii_epochs_of_a_method_without_tii_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(["--method", "l2p", "--tii-epochs", "3"])
    message = _config_error(info.value)
    assert message.startswith("argument --tii-epochs: ") and "not used by method l2p" in message
    assert _cfg(["--method", "l2p", "--epochs", "3"]).epochs == 3  # --epochs alone is fine


# ---------------------------------------------------------------------------- before alignment
def test_before_alignment_row0_default_and_official() -> None:
    """Official: "before CA" is evaluated for tasks > 0 only and row 0 keeps np.zeros
    (MoE_PromptCL engines/norga_prompt_engine.py l.211, l.391-398)."""
    final = np.array([[90.0, np.nan], [80.0, 70.0]])
    before1 = np.array([60.0, 50.0])
    default = resolve_config("synthetic", "norga")
    official = resolve_config("synthetic", "norga", overrides={"protocol": "official"})
    assert official.method_options.legacy_before_alignment_row0
    assert not default.method_options.legacy_before_alignment_row0
    rows = {}
    for name, cfg in (("default", default), ("official", official)):
        row0 = _before_alignment_row(0, final[0], None, True, cfg)
        row1 = _before_alignment_row(1, final[1], before1, True, cfg)
        rows[name] = np.vstack([row0, row1])
    np.testing.assert_array_equal(rows["default"], [[90.0, np.nan], [60.0, 50.0]])
    np.testing.assert_array_equal(rows["official"], [[0.0, np.nan], [60.0, 50.0]])
    # CA by hand: default (90 + 55) / 2 = 72.5; official (0 + 55) / 2 = 27.5; FA is the same
    assert summarize(rows["default"])["CA"] == pytest.approx(72.5)
    assert summarize(rows["official"])["CA"] == pytest.approx(27.5)
    assert summarize(rows["default"])["FA"] == summarize(rows["official"])["FA"] == 55.0
    assert np.isnan(_before_alignment_row(0, final[0], None, False, official)).all()


# ---------------------------------------------------------------------------- port transform
def test_port_transform_family_uses_one_pair_for_every_dataset() -> None:
    """dualprompt-pytorch (and l2p-pytorch) datasets.py l.37-38: one build_transform pair for
    every dataset, l.195-216: RandomResizedCrop(scale=(0.05, 1)), flip, no normalisation."""
    opts = RealDataOptions.parse({"transforms": "port"})
    assert opts.kind("cifar") == opts.kind("default") == "default"
    assert family_kind("hide", "cifar") == "cifar"
    assert family_kind("coda", "cifar") == "coda-cifar"
    pair = build_transforms(opts.kind("cifar"), image_size=32)
    assert pair.mean is None and pair.std is None
    crop = pair.train.transforms[0]
    assert crop.scale == (0.05, 1.0)
    for method, dataset in (("dualprompt", "cifar100"), ("dualprompt", "imagenet-r"),
                            ("l2p", "cifar100"), ("l2p", "5datasets")):
        cfg = resolve_config(dataset, method, "sup21k", overrides={"recipe": "original-port"})
        assert cfg.dataset_options["transforms"] == "port", (method, dataset)
    with pytest.raises(ValueError, match="transforms"):
        RealDataOptions.parse({"transforms": "nope"})
