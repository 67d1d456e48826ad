"""Helpers shared by the continual-learning tests: the ``norga-cl`` CLI (``cl.cli``), the
stop-and-resume check of a run, and the per-head slices of a textbook attention."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from cl import cli as cl_cli
from cl.config import CLConfig
from cl.run.engine import RunResult, run_experiment

ROOT = Path(__file__).resolve().parent.parent


def load_cl_cli():
    """The CLI module of ``norga-cl`` / ``experiments/cl.py`` (its ``main`` and
    ``build_parser``)."""
    return cl_cli


def run_cl_cli(capsys, *args: str) -> tuple[int, str]:
    """Exit code of ``cl.py args`` (``SystemExit`` included) and what it wrote to stderr."""
    try:
        code = load_cl_cli().main(list(args))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def check_stop_and_resume(cfg: CLConfig, tmp_path: Path, full: RunResult) -> RunResult:
    """Stop after task 1 in ``tmp_path / "split"``, resume there: the same accuracy matrix,
    task-identity accuracies and ``accuracy_matrix.csv`` as the uninterrupted run ``full`` (in
    ``tmp_path / "full"``). Returns the resumed run."""
    part = run_experiment(cfg, tmp_path / "split", stop_after_task=1)
    assert not part.finished and part.accuracy.shape[0] == 2
    assert not (tmp_path / "split/metrics.json").exists()
    resumed = run_experiment(cfg, tmp_path / "split")
    assert resumed.resumed_after_task == 1 and resumed.finished
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    np.testing.assert_array_equal(resumed.tii, full.tii)
    for name in ("accuracy_matrix.csv", "accuracy_matrix_before_alignment.csv"):
        a, b = tmp_path / "full" / name, tmp_path / "split" / name
        assert a.exists() == b.exists(), name
        if a.exists():
            assert a.read_text() == b.read_text(), name
    for run in ("full", "split"):
        check_strict_run_dir(tmp_path / run)
    return resumed


def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json_loads(text: str):
    """``json.loads`` that refuses ``NaN`` / ``Infinity`` (RFC 8259 JSON only)."""
    return json.loads(text, parse_constant=_refuse_constant)


def check_strict_run_dir(out: Path) -> dict:
    """A finished run directory: metrics.json and every log.jsonl line are strict JSON, and
    ``SHA256SUMS`` lists (and matches) every result file, ``log.jsonl`` included. Returns the
    metrics."""
    metrics = strict_json_loads((out / "metrics.json").read_text())
    for line in (out / "log.jsonl").read_text().splitlines():
        strict_json_loads(line)
    sums = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        sums[name] = digest
    assert {"metrics.json", "log.jsonl", "accuracy_matrix.csv", "config.json"} <= set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    return metrics


def head_qkv(qkv_b: torch.Tensor, h: int, C: int, D: int) -> tuple[torch.Tensor, ...]:
    """Query, key and value ``(N, D)`` of head ``h`` from one sample's ``qkv`` ``(N, 3C)``."""
    q = qkv_b[:, h * D:(h + 1) * D]
    k = qkv_b[:, C + h * D:C + (h + 1) * D]
    v = qkv_b[:, 2 * C + h * D:2 * C + (h + 1) * D]
    return q, k, v


def learnable_on_vit_b16(name: str, dataset: str, num_classes: int, num_tasks: int,
                         backbone: str = "sup21k") -> dict[str, int]:
    """Trainable parameter sizes ``{name: numel}`` of method ``name`` on ViT-B/16 with the
    ``(dataset, backbone)`` preset, built on the meta device (no data, no weights)."""
    from timm.models.vision_transformer import VisionTransformer

    from cl.config import resolve_config
    from cl.methods import get_method

    with torch.device("meta"):
        vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12,
                                num_heads=12, num_classes=0)
    per_task = num_classes // num_tasks
    task_classes = [list(range(t * per_task, (t + 1) * per_task)) for t in range(num_tasks)]
    cfg = resolve_config(dataset, name, backbone)
    method = get_method(name)(cfg, vit, num_classes, task_classes, device="meta")
    return {k: p.numel() for k, p in method.model.named_parameters() if p.requires_grad}


def saved_bytes(fn, exclude: list[torch.Tensor]) -> int:
    """Bytes autograd saves for backward while ``fn`` runs, one count per storage, the storages
    of ``exclude`` (module parameters) left out."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()  # the counted graph really is a training graph
    return sum(seen.values())


class PoisonedLoader:
    """Batches ``make_batch(0), ..., make_batch(step)`` on every pass over the loader, with a
    NaN in the first image of batch ``step`` on pass ``epoch`` (0-based): a loader whose loss
    turns non-finite at a known epoch and step."""

    def __init__(self, make_batch, epoch: int, step: int) -> None:
        self.make_batch, self.epoch, self.step, self.passes = make_batch, epoch, step, 0

    def __len__(self) -> int:
        return self.step + 1

    def __iter__(self):
        for i in range(self.step + 1):
            x, y = self.make_batch(i)
            if self.passes == self.epoch and i == self.step:
                x = x.clone()
                x[0] = float("nan")
            yield x, y
        self.passes += 1


def tiny_timm_vit(seed: int = 0, depth: int = 4, *, embed_dim: int = 16, num_heads: int = 2,
                  **kw):
    """A 8x8-pixel timm ViT (4 patches + CLS) in eval mode, with non-trivial norms and biases."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=embed_dim, depth=depth,
                            num_heads=num_heads, num_classes=0, **kw)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape))
    return vit.eval()


def tiny_images(n: int = 3, seed: int = 1) -> torch.Tensor:
    """``n`` random 8x8 RGB images from their own generator."""
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
