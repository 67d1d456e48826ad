"""Paper presets (docs/cl-background.md#hyperparameters) for every table row, the generated --help
listing, and the CLI's exit code 2 for missing data and missing weights (nothing written)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cl_helpers import load_cl_cli, run_cl_cli

from cl.backbones import loading as bb
from cl.backbones.loading import BackboneWeightsError
from cl.config import describe_presets, resolve_config
from cl.methods import base as methods_base
from cl.options import MethodOptions

SSL = ("ibot21k", "ibot1k", "dino1k", "mocov3-1k")

# ----------------------------------------------------------------
# docs/cl-background.md#hyperparameters, transcribed here Run 2 (NoRGa scripts): epochs, scheduler,
# prompt length, momentum, reg, sigma, TAP epochs, TAP ca_lr, larger prompt lr, clip.
_RUN2 = ("epochs", "scheduler", "prompt_length", "prompt_momentum", "reg", "gate_act",
         "tap_epochs", "ca_lr", "larger_prompt_lr", "clip_grad")
NORGA_RUN2: dict[tuple[str, str], tuple] = {
    ("cifar100", "sup21k"): (50, "step", 5, 0.01, 0.1, "sigmoid", 80, 0.05, True, 1.0),
    ("cifar100", "ibot21k"): (20, "step", 5, 0.1, 0.1, "tanh", 80, 0.005, True, 1.0),
    ("cifar100", "ibot1k"): (20, "step", 5, 0.1, 0.1, "tanh", 80, 0.005, True, 1.0),
    ("cifar100", "dino1k"): (20, "step", 5, 0.1, 0.1, "tanh", 80, 0.005, True, 1.0),
    ("cifar100", "mocov3-1k"): (20, "step", 5, 0.1, 0.1, "gelu", 80, 0.005, True, 1.0),
    ("imagenet-r", "sup21k"): (150, "cosine", 20, 0.01, 0.5, "sigmoid", 30, 0.005, True, 1.0),
    ("imagenet-r", "ibot21k"): (50, "constant", 20, 0.01, 0.5, "tanh", 30, 0.005, True, 1.0),
    ("imagenet-r", "ibot1k"): (50, "constant", 20, 0.01, 0.5, "sigmoid", 80, 0.005, True, 1.0),
    ("imagenet-r", "dino1k"): (50, "constant", 20, 0.01, 0.5, "tanh", 30, 0.005, True, 1.0),
    ("imagenet-r", "mocov3-1k"): (50, "constant", 20, 0.01, 0.5, "gelu", 30, 0.005, True, 1.0),
    ("cub200", "sup21k"): (50, "step", 20, 0.01, 0.01, "sigmoid", 80, 0.05, False, 1.0),
    ("cub200", "ibot21k"): (50, "step", 20, 0.01, 0.01, "tanh", 80, 0.05, False, 1.0),
    ("5datasets", "sup21k"): (20, "constant", 40, 0.01, 0.1, "tanh", 30, 0.005, True, 2.0),
    ("5datasets", "ibot21k"): (20, "constant", 40, 0.01, 0.1, "sigmoid", 30, 0.005, True, 2.0),
}
# Run 1 (TII): epochs, lr, scheduler (NoRGa), MLP, ca_lr NoRGa, ca_lr HiDe, scheduler HiDe.
_RUN1 = ("tii_epochs", "tii_lr", "tii_scheduler", "tii_mlp", "tii_ca_lr")


def run1(dataset: str, backbone: str) -> tuple[tuple, tuple]:
    if dataset == "cifar100":
        if backbone == "sup21k":
            return (20, 5e-4, "constant", [2], 0.005), (20, 5e-4, "constant", [2], 0.005)
        return (20, 5e-4, "step", [2], 0.05), (20, 5e-4, "step", [2], 0.005)
    if dataset == "imagenet-r":
        return (20, 5e-4, "step", [2], 0.005), (20, 5e-4, "step", [2], 0.005)
    if dataset == "cub200":
        if backbone == "sup21k":
            return (20, 0.01, "constant", [2], 0.05), (20, 0.01, "step", [2], 0.005)
        return (20, 5e-4, "step", [2], 0.05), (20, 5e-4, "step", [2], 0.005)
    return (20, 1e-3, "constant", [4, 4], 0.005), (20, 1e-3, "constant", [4, 4], 0.005)


def _get(cfg: Any, name: str) -> Any:
    """A run field, or else an option of the method."""
    return getattr(cfg, name) if hasattr(cfg, name) else getattr(cfg.method_options, name)


def _values(cfg: Any, names: tuple[str, ...]) -> tuple:
    return tuple(_get(cfg, n) for n in names)


@pytest.mark.parametrize("dataset,backbone", sorted(NORGA_RUN2))
def test_paper_rows_have_the_script_values(dataset: str, backbone: str) -> None:
    norga = resolve_config(dataset, "norga", backbone)
    hide = resolve_config(dataset, "hide", backbone)
    expected = NORGA_RUN2[(dataset, backbone)]
    assert _values(norga, _RUN2) == expected
    # HiDe-Prompt: same scripts without the gate; TAP 30 epochs at ca_lr 0.005 everywhere
    hide_expected = dict(zip(_RUN2, expected, strict=True), tap_epochs=30, ca_lr=0.005)
    hide_expected.pop("gate_act")
    assert {k: _get(hide, k) for k in hide_expected} == hide_expected
    tii_norga, tii_hide = run1(dataset, backbone)
    assert _values(norga, _RUN1) == tii_norga
    assert _values(hide, _RUN1) == tii_hide
    for cfg in (norga, hide):  # shared by every script
        assert _values(cfg, ("lr", "batch_size", "tii_ca_epochs", "prompt_layers")) == (
            0.03, 128, 30, [0, 1, 2, 3, 4])
        assert cfg.method_options.stats_method == "covariance"


def test_backbones_outside_the_tables_fall_back_to_sup21k() -> None:
    for method in ("norga", "hide"):
        sup = resolve_config("cub200", method, "sup21k").to_dict()
        dino = resolve_config("cub200", method, "dino1k").to_dict()
        assert {k for k in sup if sup[k] != dino[k]} == {"backbone"}


# ---------------------------------------------------------------- the --help listing


def test_help_lists_presets_and_weights() -> None:
    text = load_cl_cli().build_parser().format_help()
    for word in ("presets", "cifar100", "imagenet-r", "cub200", "5datasets", "+ibot21k",
                 "+mocov3-1k", "gate_act=gelu", "tap_epochs=80", "dino_vitbase16_pretrain.pth",
                 "vit_base_patch16_224.orig_in21k", "ViT-B_16.npz", "NORGA_WEIGHTS"):
        assert word in text, word


def test_listing_is_generated_from_registered_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class BaselineOptions(MethodOptions):
        pool_size: int = 3

    class Baseline(methods_base.Method):  # the presets a new method class declares
        options_type = BaselineOptions
        presets = {
            "*": dict(lr=0.0042, method_options=dict(pool_size=17)),
            ("cifar100", "ibot1k"): dict(epochs=7),
        }

    monkeypatch.setitem(methods_base._METHODS, "zz-baseline", Baseline)
    lines = describe_presets().splitlines()
    mine = [line for line in lines if "zz-baseline" in line]
    assert len(mine) == 6  # one per dataset
    assert all("lr=0.0042" in line and "pool_size=17" in line for line in mine)
    start = lines.index(next(x for x in lines if x.startswith("  cifar100")))
    block = lines[start:lines.index(next(x for x in lines if x.startswith("  imagenet-r")))]
    after = block[block.index(next(x for x in block if "zz-baseline" in x)) + 1:]
    assert after[0].split() == ["+ibot1k", "epochs=7"]


# ---------------------------------------------------------------- CLI: missing inputs


@pytest.mark.parametrize("dataset,url", [
    ("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ("imagenet-r", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"),
    ("cub200", "CUB_200_2011.tgz"),
    ("5datasets", "notMNIST.zip"),
])
def test_cli_missing_dataset_exits_2_and_writes_nothing(dataset: str, url: str, tmp_path: Path,
                                                         capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_cl_cli(capsys, "--dataset", dataset, "--data-root", str(tmp_path / "data"),
                         "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert err.startswith("cl.py: error:") and "not found" in err and url in err
    assert "--download" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run dir, no data dir, no runs/


def test_cli_missing_weights_file_exits_2_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(bb.WEIGHTS_ENV, str(tmp_path / "cache"))
    code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--backbone", "ibot21k",
                         "--weights", str(tmp_path / "missing.pth"), "--out", "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "missing.pth" in err and "not found" in err and "vitb_16_pt22k" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    def offline(name: str, directory: Any = None, **kwargs: Any):
        raise BackboneWeightsError(f"backbone {name!r}: download failed: offline")

    monkeypatch.setattr(bb, "fetch_weights", offline)
    code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--backbone", "dino1k",
                         "--download", "--out", "run")
    assert code == 2 and "download failed" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
