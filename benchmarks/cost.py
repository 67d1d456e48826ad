#!/usr/bin/env python
"""Learnable parameters and GFLOPs per image of every registered CL method on ViT-B/16.

Counts do not depend on the weights, so the backbone is the randomly initialised ViT-B/16
(``vit-b16-random``, 224x224) and nothing is downloaded. Every method is built with its
ImageNet-R preset (200 classes, 10 tasks: the setting of the SMoPE poster's cost table) and
measured on one image (batch 1) on the CPU:

* ``learnable_params``: parameters with ``requires_grad`` after ``begin_task`` of task 0, over
  every module the method holds (prompts of all tasks, heads, the TII model), frozen backbone
  excluded.
* ``inference_gflops``: ``method.predict`` on one image (all passes it needs).
* ``train_forward_gflops``: the forward passes of one training step of task 0
  (``train_task`` with one image and one epoch of every phase, backward disabled). This is the
  convention of the SMoPE poster (a query pass plus a prompted pass = 2 x one ViT pass).
* ``train_gflops``: the same step with backward (what the step really costs).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add) with
``scaled_dot_product_attention`` forced to its math backend, whose matmuls the counter sees (the
fused CPU kernel is not counted). End-of-task work (statistics, Gaussian head alignment) is not
included: it does not scale with the training images.

Usage::

    python benchmarks/cost.py                     # all registered methods, ~2-4 min on 2 cores
    python benchmarks/cost.py --methods smope l2p

Writes ``benchmarks/results/cost.json`` and ``benchmarks/results/cost.md`` (costs relative to
L2P, and the SMoPE poster's numbers next to ours).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from cl.backbones.loading import build_backbone
from cl.config import method_uses, resolve_config
from cl.methods import Task, available_methods, get_method
from cl.models.vit import pooled
from cl.run.files import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("cost")

#: Methods of the comparison, in table order (those not registered are skipped with a note).
METHODS = ("l2p", "dualprompt", "sprompt", "coda-prompt", "hide", "norga", "smope")
REFERENCE = "l2p"
#: Dataset whose presets (and class / task counts) are used.
DATASET, NUM_CLASSES, NUM_TASKS = "imagenet-r", 200, 10
#: Per-method overrides: measure SMoPE's steady top-K step, not its task-0 dense warm-up.
EXTRA_OVERRIDES: dict[str, dict[str, Any]] = {
    "smope": {"method_options": {"warmup_fraction": 0.0}},
}
#: SMoPE poster (docs/cl-background.md#smope-results): params (M), train GFLOPs, test GFLOPs.
POSTER: dict[str, tuple[float, float, float]] = {
    "l2p": (4.78, 67.44, 67.44),  # "Deep L2P++" on the poster
    "dualprompt": (1.10, 33.72, 67.44),
    "coda-prompt": (3.99, 67.44, 67.44),
    "hide": (4.21, 33.72, 67.45),
    "norga": (4.21, 33.72, 67.45),
    "smope": (0.38, 33.72, 33.72),
}
TWO_PASS = ("l2p", "dualprompt", "sprompt", "coda-prompt", "hide", "norga")


# ---------------------------------------------------------------------------- counting
def _tii_budget(name: str) -> dict[str, int]:
    # only HiDe / NoRGa train a TII model; the baselines refuse a tii_epochs they would ignore
    return {"tii_epochs": 1} if method_uses(name, "tii_epochs") else {}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` (forward and any backward it runs), SDPA via its math backend."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@contextlib.contextmanager
def backward_disabled() -> Iterator[None]:
    """Make ``loss.backward()`` a no-op, so a training step runs its forward passes only.

    Parameters then get no gradients and optimizers skip them; the method's state after this
    is meaningless, which is fine for counting.
    """
    saved = torch.Tensor.backward, torch.autograd.backward
    torch.Tensor.backward = lambda self, *a, **k: None  # type: ignore[method-assign]
    torch.autograd.backward = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.backward, torch.autograd.backward = saved  # type: ignore[method-assign]


def learnable_parameters(method: object) -> tuple[int, dict[str, int]]:
    """Trainable parameter count over every ``nn.Module`` attribute of ``method``.

    Returns the total and a breakdown by parameter name (each tensor counted once).
    """
    seen: set[int] = set()
    breakdown: dict[str, int] = {}
    for attr, module in vars(method).items():
        if not isinstance(module, nn.Module):
            continue
        for name, p in module.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                breakdown[f"{attr}.{name}"] = p.numel()
    return sum(breakdown.values()), breakdown


def measure_method(name: str, vit: nn.Module, image: torch.Tensor) -> dict[str, Any]:
    """Parameters and GFLOPs of one method (a fresh copy of ``vit`` each time)."""
    overrides = {"epochs": 1, **_tii_budget(name), "batch_size": 1, "eval_batch_size": 1,
                 "device": "cpu", "seed": 0, **EXTRA_OVERRIDES.get(name, {})}
    cfg = resolve_config(DATASET, name, "vit-b16-random", overrides=overrides)
    per_task = NUM_CLASSES // NUM_TASKS
    task_classes = [list(range(t * per_task, (t + 1) * per_task)) for t in range(NUM_TASKS)]
    method = get_method(name)(cfg, copy.deepcopy(vit), NUM_CLASSES, task_classes, device="cpu")
    task = Task(0, task_classes[0], task_classes)
    method.begin_task(task)
    params, breakdown = learnable_parameters(method)

    label = torch.tensor([task_classes[0][0]])
    loader = DataLoader(TensorDataset(image, label), batch_size=1)
    t0 = time.time()
    inference = count_flops(lambda: method.predict(image))
    with backward_disabled():
        train_forward = count_flops(lambda: method.train_task(loader))
    method.begin_task(task)  # fresh optimizer state for the real step
    train = count_flops(lambda: method.train_task(loader))
    return {
        "learnable_params": params,
        "params_breakdown": breakdown,
        "inference_gflops": inference / 1e9,
        "train_forward_gflops": train_forward / 1e9,
        "train_gflops": train / 1e9,
        "seconds": round(time.time() - t0, 1),
    }


def plain_vit_gflops(vit: nn.Module, image: torch.Tensor) -> float:
    """One prompt-free ViT-B/16 forward pass (the unit of the poster's table)."""
    with torch.no_grad():
        return count_flops(lambda: pooled(vit, vit.forward_features(image))) / 1e9


# ---------------------------------------------------------------------------- report
def _ratio(a: float, b: float | None) -> float | None:
    return None if not b else a / b


def summarise(results: dict[str, dict[str, Any]], one_pass: float) -> dict[str, Any]:
    """Costs relative to L2P and to one ViT pass, and the check of SMoPE's claims."""
    ref = results.get(REFERENCE)
    for r in results.values():
        r["passes_inference"] = r["inference_gflops"] / one_pass
        r["passes_train_forward"] = r["train_forward_gflops"] / one_pass
        r["relative_to_l2p"] = None if ref is None else {
            "params": _ratio(r["learnable_params"], ref["learnable_params"]),
            "train_forward_gflops": _ratio(r["train_forward_gflops"], ref["train_forward_gflops"]),
            "train_gflops": _ratio(r["train_gflops"], ref["train_gflops"]),
            "inference_gflops": _ratio(r["inference_gflops"], ref["inference_gflops"]),
        }
    claims: dict[str, Any] = {}
    smope = results.get("smope")
    if smope is not None:
        two_pass = {m: results[m]["inference_gflops"] for m in TWO_PASS if m in results}
        claims = {
            "smope_learnable_params_M": smope["learnable_params"] / 1e6,
            "paper_learnable_params_M": 0.38,
            "smope_inference_over_two_pass": {
                m: smope["inference_gflops"] / g for m, g in two_pass.items()},
            "smope_train_forward_over_two_pass": {
                m: smope["train_forward_gflops"] / results[m]["train_forward_gflops"]
                for m in two_pass},
            "paper_claim": "about 0.38M learnable parameters and roughly half the compute of "
                           "two-pass methods (computational cost reduced by up to 50%)",
        }
    return claims


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    """The Markdown report: one table row per method, then the SMoPE claim check."""
    skipped = payload["skipped"]
    # table order (the JSON file stores the methods with sorted keys)
    order = [m for m in METHODS if m in payload["methods"]]
    order += sorted(set(payload["methods"]) - set(order))
    results = {m: payload["methods"][m] for m in order}
    one_pass = payload["reference"]["vit_b16_forward_gflops"]
    lines = [
        "# Cost per image on ViT-B/16 (224x224, batch 1, CPU)",
        "",
        f"Generated by `python benchmarks/cost.py` (torch {payload['torch']}). FLOPs counted by "
        "`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add, attention via the "
        "SDPA math backend); presets of ImageNet-R (200 classes, 10 tasks). One plain ViT-B/16 "
        f"pass = **{one_pass:.2f} GFLOPs** here (the poster's unit is 33.72).",
        "",
        "| method | learnable params (M) | train fwd GFLOPs | train fwd+bwd GFLOPs | "
        "inference GFLOPs | params / L2P | train fwd / L2P | inference / L2P | "
        "poster params (M) | poster train | poster test |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rel = r["relative_to_l2p"] or {}
        poster = POSTER.get(name)
        lines.append(
            f"| {name} | {r['learnable_params'] / 1e6:.3f} | {r['train_forward_gflops']:.2f} | "
            f"{r['train_gflops']:.2f} | {r['inference_gflops']:.2f} | "
            f"{_fmt(rel.get('params'))} | {_fmt(rel.get('train_forward_gflops'))} | "
            f"{_fmt(rel.get('inference_gflops'))} | "
            + (" | ".join(f"{v:.2f}" for v in poster) if poster else "- | - | -") + " |"
        )
    lines.append("")
    if REFERENCE not in results:
        lines.append(f"**{REFERENCE} is not registered yet, so the columns relative to L2P are "
                     "n/a.**")
        lines.append("")
    for name, why in skipped.items():
        lines.append(f"- skipped `{name}`: {why}")
    if skipped:
        lines.append("")
    lines += [
        "Notes:",
        "- *train fwd* counts the forward passes of one training step of task 0 (the poster's "
        "convention); *train fwd+bwd* adds the backward pass. HiDe-Prompt / NoRGa steps include "
        "one epoch of their TII model (a prompt-free pass) as well as the prompt step; the poster "
        "counts the prompt stage only (33.72).",
        "- Parameters count every task's prompts, the head and (HiDe / NoRGa) the TII adapter + "
        "head; the frozen backbone is excluded.",
        "- End-of-task work (class statistics, Gaussian head alignment) is not included.",
        "- The poster's L2P row is *Deep L2P++* of the CODA codebase (prefixes in several "
        "layers, pool 30 x length 20); `l2p` here is the L2P of "
        "docs/cl-background.md#key-matched-baselines (prompt "
        "tuning at layer 0, pool 30, length 5), hence far fewer parameters and a longer token "
        "sequence (25 prompt tokens in all 12 blocks).",
        "- DualPrompt's training step here runs the query pass for the pull loss (2 passes); "
        "the poster counts 1.",
    ]
    claims = payload.get("claims") or {}
    if claims:
        inf = {m: claims["smope_inference_over_two_pass"][m] for m in order
               if m in claims["smope_inference_over_two_pass"]}
        train = {m: claims["smope_train_forward_over_two_pass"][m] for m in inf}
        lines += [
            "",
            "## SMoPE against the paper's claim",
            "",
            f"- Learnable parameters: **{claims['smope_learnable_params_M']:.3f}M** here vs "
            f"about {claims['paper_learnable_params_M']}M claimed.",
            "- Inference compute of SMoPE relative to the two-pass methods: "
            + ", ".join(f"{m} {v:.2f}x" for m, v in inf.items())
            + " (claim: roughly 0.5x).",
            "- Training forward compute relative to them: "
            + ", ".join(f"{m} {v:.2f}x" for m, v in train.items()) + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS),
                        help=f"methods to measure (default: {' '.join(METHODS)})")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="output folder (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    registered = set(available_methods())
    vit = build_backbone("vit-b16-random", img_size=224, seed=0).model.eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    one_pass = plain_vit_gflops(vit, image)
    log.info("one ViT-B/16 pass: %.2f GFLOPs", one_pass)
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name in args.methods:
        if name not in registered:
            skipped[name] = "not registered (no module in cl/methods yet)"
            log.info("%s: skipped (not registered)", name)
            continue
        try:
            results[name] = measure_method(name, vit, image)
        except Exception as exc:  # noqa: BLE001 - one broken method must not hide the others
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            log.info("%s: failed (%s)", name, exc)
            continue
        r = results[name]
        log.info("%s: %.3fM params, train fwd %.2f, train fwd+bwd %.2f, inference %.2f GFLOPs "
                 "(%.0fs)", name, r["learnable_params"] / 1e6, r["train_forward_gflops"],
                 r["train_gflops"], r["inference_gflops"], r["seconds"])
    claims = summarise(results, one_pass)
    payload = {
        "kind": "cost",
        "version": 1,
        "backbone": "vit-b16-random (ViT-B/16 architecture, random init; counts do not depend "
                    "on weights)",
        "image_size": 224,
        "batch_size": 1,
        "dataset_presets": DATASET,
        "num_classes": NUM_CLASSES,
        "num_tasks": NUM_TASKS,
        "counter": "torch.utils.flop_counter.FlopCounterMode, SDPA math backend",
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": args.threads,
        "reference": {"vit_b16_forward_gflops": one_pass, "relative_to": REFERENCE},
        "methods": results,
        "skipped": skipped,
        "poster": {m: dict(zip(("params_M", "train_gflops", "test_gflops"), v, strict=True))
                   for m, v in POSTER.items()},
        "claims": claims,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "cost.json", payload)
    write_text_atomic(args.out / "cost.md", markdown(payload))
    log.info("wrote %s and %s", args.out / "cost.json", args.out / "cost.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
