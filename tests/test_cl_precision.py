"""``--precision {fp32,bf16}`` and ``--compile`` (cl/run/precision.py, issue 8 item 4).

bf16 runs here under CPU autocast (torch supports it; on a GPU the same code uses CUDA
autocast). Stated tolerance of bf16 against fp32 on the tiny random ViT: logits within 2e-2
relative (Frobenius norm of the difference over the norm of the fp32 logits) and at least 95%
of the argmax predictions equal on a batch of 64.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cl import cli as cl_cli
from cl.backbones.loading import build_backbone
from cl.config import CLConfig, resolve_config
from cl.methods import Task, available_methods, get_method
from cl.models.vit import PromptedViT
from cl.run.engine import RunDirError, _check_same_config
from cl.run.precision import CompileError, apply_precision, apply_to_model, to_float32

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
REL_TOL = 2e-2
ARGMAX_AGREEMENT = 0.95


def _tiny_prompted(gate: str, fused: bool) -> PromptedViT:
    vit = build_backbone("vit-tiny-random", img_size=32, seed=0).model.eval()
    return PromptedViT(vit, 10, pool_size=3, prompt_length=5, gate=gate, fused=fused,
                       generator=torch.Generator().manual_seed(1)).eval()


def _batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return x, torch.arange(n) % 3


@pytest.mark.parametrize("gate,fused", [("norga", True), ("norga", False), ("linear", True)])
def test_bf16_predictions_agree_with_fp32(gate: str, fused: bool) -> None:
    model = _tiny_prompted(gate, fused)
    x, ids = _batch()
    with torch.no_grad():
        exact = model(x, ids)
    assert apply_to_model(model, device="cpu", precision="bf16") == ["forward_features"]
    with torch.no_grad():
        tokens = model.forward_features(x, ids)
        mixed = model(x, ids)
    # the autocast region ends before the head: features and logits come back in float32
    assert tokens.dtype == torch.float32 and mixed.dtype == torch.float32
    rel = float((mixed - exact).norm() / exact.norm())
    agree = float((mixed.argmax(1) == exact.argmax(1)).float().mean())
    assert 0.0 < rel < REL_TOL, rel  # > 0: bf16 really ran (else the test would prove nothing)
    assert agree >= ARGMAX_AGREEMENT, agree


def test_bf16_training_step_keeps_float32_loss_and_grads() -> None:
    model = _tiny_prompted("norga", True)
    apply_to_model(model, device="cpu", precision="bf16")
    x, ids = _batch(16)
    loss = torch.nn.functional.cross_entropy(model(x, ids), torch.zeros(16, dtype=torch.long))
    loss.backward()
    assert loss.dtype == torch.float32
    assert model.prompt.prompt.dtype == torch.float32  # parameters are never cast in place
    assert model.prompt.prompt.grad.dtype == torch.float32
    assert float(model.prompt.prompt.grad.abs().sum()) > 0


def test_fp32_leaves_the_model_untouched() -> None:
    model = _tiny_prompted("norga", True)
    before = model.forward_features
    assert apply_to_model(model, device="cpu", precision="fp32") == []
    assert model.forward_features == before and "forward_features" not in vars(model)


def test_wrapping_twice_is_refused() -> None:
    model = _tiny_prompted("linear", True)
    apply_to_model(model, device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="already wrapped"):
        apply_to_model(model, device="cpu", precision="bf16")


def test_to_float32_walks_containers_and_dataclasses() -> None:
    from dataclasses import dataclass

    @dataclass
    class Route:
        scores: torch.Tensor
        ids: torch.Tensor

    half = torch.ones(2, dtype=torch.bfloat16)
    out = to_float32((half, [Route(half, torch.arange(2))], {"a": half}))
    assert out[0].dtype == torch.float32
    assert out[1][0].scores.dtype == torch.float32 and out[1][0].ids.dtype == torch.long
    assert out[2]["a"].dtype == torch.float32


def _method(name: str, precision: str):
    cfg = resolve_config("synthetic", name, "vit-tiny-random", overrides={
        "epochs": 1, "tii_epochs": 1, "batch_size": 8, "precision": precision,
        **({"method_options": {"warmup_fraction": 0.0}} if name == "smope" else {})},
        allow_unused=True)  # one budget for every method, whatever phases it has
    vit = build_backbone("vit-tiny-random", img_size=32, seed=0).model.eval()
    task_classes = [[0, 1], [2, 3]]
    method = get_method(name)(cfg, vit, 4, task_classes, device="cpu")
    return cfg, method, task_classes


@pytest.mark.slow
@pytest.mark.parametrize("name", available_methods())
def test_every_method_trains_and_predicts_in_bf16(name: str) -> None:
    """One task under bf16: train step, statistics, prediction (float32 logits)."""
    cfg, method, task_classes = _method(name, "bf16")
    with pytest.warns(RuntimeWarning, match="slower"):
        done = apply_precision(method, device="cpu", precision="bf16")
    assert "model" in done
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1] * 8)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    task = Task(0, task_classes[0], task_classes, stats_loader=loader)
    method.begin_task(task)
    method.train_task(loader)
    method.end_task(task)
    logits = method.predict(x)
    assert logits.dtype == torch.float32 and torch.isfinite(logits[:, :2]).all()
    for stats_name in ("prompt_stats", "tii_stats", "stats"):  # float64 sums stay float64
        stats = getattr(method, stats_name, None)
        if stats is None:
            continue
        sums = [*stats.sum.values(), *stats.sum_sq.values()]
        assert len(sums) == 4, stats_name  # classes 0 and 1 were collected
        assert all(s.dtype == torch.float64 for s in sums), stats_name
        assert all(torch.isfinite(s).all() for s in sums), stats_name


def test_hide_tii_head_stays_float32() -> None:
    _, method, _ = _method("norga", "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        done = apply_precision(method, device="cpu", precision="bf16")
    assert done == {"model": ["forward_features"]}  # not the TII adapter


def test_compile_failure_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn):
        def run(*args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler\nlong traceback text")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = _tiny_prompted("norga", True)
    apply_to_model(model, device="cpu", precision="fp32", compile=True)
    x, ids = _batch(2)
    with pytest.raises(CompileError, match=r"torch.compile failed for PromptedViT"
                                           r".*no C\+\+ compiler; re-run without --compile"):
        model(x, ids)


def test_compile_wraps_with_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_compile(fn):
        calls.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = _tiny_prompted("norga", True)
    x, ids = _batch(4)
    with torch.no_grad():
        exact = model(x, ids)
    apply_to_model(model, device="cpu", precision="fp32", compile=True)
    with torch.no_grad():
        assert torch.equal(model(x, ids), exact)
    assert len(calls) == 1


# ---------------------------------------------------------------------------- config and CLI
def test_config_fields_and_validation() -> None:
    assert CLConfig().precision == "fp32" and CLConfig().compile is False  # exact by default
    cfg = resolve_config("synthetic", "norga", overrides={"precision": "bf16", "compile": "true"})
    assert cfg.precision == "bf16" and cfg.compile is True
    with pytest.raises(ValueError, match="precision: must be one of fp32, bf16; got 'fp16'"):
        resolve_config("synthetic", "norga", overrides={"precision": "fp16"})
    with pytest.raises(ValueError, match="compile"):
        CLConfig(compile="yes").validate()  # type: ignore[arg-type]


def _cli():
    return cl_cli


def test_cli_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cli = _cli()
    parser = cli.build_parser()
    args = parser.parse_args(["--dataset", "synthetic", "--precision", "bf16", "--compile"])
    overrides = cli.overrides_from_args(args, parser)
    assert overrides["precision"] == "bf16" and overrides["compile"] is True
    args = parser.parse_args(["--dataset", "synthetic"])
    overrides = cli.overrides_from_args(args, parser)
    assert "precision" not in overrides and "compile" not in overrides  # presets decide
    with pytest.raises(SystemExit) as exc:
        cli.main(["--dataset", "synthetic", "--precision", "fp16", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "fp16" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_resume_of_a_run_saved_before_the_precision_fields(tmp_path: Path) -> None:
    import json

    cfg = resolve_config("synthetic", "norga")
    old = cfg.to_dict()
    del old["precision"], old["compile"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    _check_same_config(tmp_path, cfg)  # defaults: the same run
    _check_same_config(tmp_path, resolve_config("synthetic", "norga",
                                                overrides={"compile": True}))  # runtime key
    with pytest.raises(RunDirError, match="precision"):
        _check_same_config(tmp_path, resolve_config("synthetic", "norga",
                                                    overrides={"precision": "bf16"}))
