#!/usr/bin/env python
"""Fused vs reference prefix attention, and prompted vs plain ViT-B/16: time and memory.

Measured side by side in one run, on the same randomly initialised ViT-B/16 (224x224, weights
do not change the cost) and the same batch, with per-sample prefixes (L_p = 5, blocks 0-4, the
CIFAR-100 preset):

1. **One prompted block** (block 0 of the prompted ViT, input and prefix requiring gradients
   as in blocks 1-4 during training): forward + backward, reference path vs fused path, for the
   NoRGa gate (tanh) and the linear gate (HiDe-Prompt).
2. **The whole prompted ViT-B/16**: forward + backward down to the prompts, reference vs fused,
   both gates.
3. **Forward only** (``torch.no_grad``): plain timm ViT-B/16 without prompts vs the prompted
   ViT with the linear gate and with the NoRGa gate (fused path), same batch.

Timing: ``--repeats`` rounds after one warm-up round; within a round the configurations run in
turn (interleaved), so a slow phase of the shared machine hits all of them alike; the median
is reported.

Memory: on the CPU, peak RSS or ``tracemalloc`` do not isolate what a configuration needs, so
the **activation memory saved for backward** is counted exactly with
``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd stores for the backward
pass is recorded once per storage (views share one storage), frozen parameters excluded; the
sum of the storage sizes is what the forward pass keeps alive until backward, which is what
separates the two attention paths (the reference path keeps the ``(B, H, N, L_p + N)``
attention matrix and the gated logits; the fused kernel keeps its output and a log-sum-exp).
On a GPU the peak of ``torch.cuda.max_memory_allocated`` above the resting allocation is
reported as well.

Which SDPA kernel runs (``sdpa_backward_node`` in the JSON): a float ``attn_mask`` that needs a
gradient sends the CPU SDPA to its math fallback, which keeps the attention matrix like the
reference path. NoRGa's ``gate(s_P) - s_P`` depends on the prompts, so the fused path does not
pass it as a mask but in extra head dimensions (``cl/models/prefix_attention.py``) and gets the
fused kernel in training as well; ``norga_prefix_attention`` names the node that path records.
The linear gate has no bias and always gets the fused kernel.

Device: CPU float32 here; when CUDA is present the same measurements run on the GPU under
bf16 autocast (batch 64 by default) and the JSON says so; ``--device cpu`` forces the CPU.

Usage::

    python benchmarks/attention.py            # CPU: batch 8, 3 repeats, ~7 min on 2 cores
    python benchmarks/attention.py --quick    # batch 4, 2 repeats, ~1.5 min

Writes ``benchmarks/results/attention.json`` and prints the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl.backbones.loading import build_backbone
from cl.models.prefix_attention import PrefixAttention, sdpa_backward_node
from cl.models.vit import PromptedViT
from cl.run.files import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("attention")

GATES = ("norga", "linear")
PATHS = ("reference", "fused")
#: Targets of issue 8, item 3 (reported against, not enforced).
TARGETS = {
    "fused_over_reference_time_max": 1.0,
    "fused_over_reference_saved_bytes_max": 1.0,
    "norga_over_plain_forward_max": 1.10,
    "norga_over_linear_forward_max": 1.03,
}


# ---------------------------------------------------------------------------- measuring
class Device:
    """Where and in which precision to run: CPU float32, or CUDA under bf16 autocast."""

    def __init__(self, name: str) -> None:
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"
        self.precision = "bf16" if self.cuda else "fp32"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def seconds(fn: Callable[[], object], dev: Device) -> float:
    """Wall time of one call of ``fn`` (GPU work included)."""
    dev.sync()
    t0 = time.perf_counter()
    fn()
    dev.sync()
    return time.perf_counter() - t0


def interleaved_medians(configs: dict[str, Callable[[], object]], dev: Device, repeats: int,
                        ) -> dict[str, dict[str, Any]]:
    """One warm-up round, then ``repeats`` rounds running every configuration in turn.

    Returns per configuration the median and all timings (seconds).
    """
    times: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(repeats + 1):
        for name, fn in configs.items():
            t = seconds(fn, dev)
            if round_ > 0:  # round 0 warms up allocator, kernels and caches
                times[name].append(t)
    return {name: {"median_s": statistics.median(ts), "times_s": [round(t, 5) for t in ts]}
            for name, ts in times.items()}


@contextlib.contextmanager
def saved_activation_bytes(frozen: list[nn.Parameter]) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward inside the block (see module docstring).

    Each storage is counted once; storages of ``frozen`` parameters (e.g. the projection weights
    a linear layer keeps to compute its input gradient) are not activations and are skipped.
    """
    skip = {p.untyped_storage().data_ptr() for p in frozen}
    seen: set[int] = set()
    out = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            out["bytes"] += storage.nbytes()
            out["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


def measure_memory(fn_forward: Callable[[], torch.Tensor], frozen: list[nn.Parameter],
                   dev: Device) -> dict[str, float]:
    """Saved-for-backward bytes of one forward (then its backward), plus the CUDA peak."""
    if dev.cuda:
        torch.cuda.empty_cache()
        dev.sync()
        base = torch.cuda.memory_allocated(dev.device)
        torch.cuda.reset_peak_memory_stats(dev.device)
    with saved_activation_bytes(frozen) as counted:
        loss = fn_forward()
    loss.backward()
    result = {"saved_for_backward_MiB": counted["bytes"] / 2**20,
              "saved_tensors": counted["tensors"]}
    if dev.cuda:
        dev.sync()
        result["cuda_peak_MiB"] = (torch.cuda.max_memory_allocated(dev.device) - base) / 2**20
    return result


# ---------------------------------------------------------------------------- models
def build_models(dev: Device, prompt_length: int, image_size: int,
                 ) -> tuple[nn.Module, dict[str, PromptedViT]]:
    """The plain timm ViT-B/16 and one prompted copy per gate (same seeded weights)."""
    def vit() -> nn.Module:
        return build_backbone("vit-b16-random", img_size=image_size, seed=0).model

    plain = vit().to(dev.device).eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    prompted = {}
    for gate in GATES:
        model = PromptedViT(vit(), 100, pool_size=10, prompt_length=prompt_length,
                            prompt_layers=(0, 1, 2, 3, 4), gate=gate, activation="tanh",
                            fused=True, generator=torch.Generator().manual_seed(1))
        prompted[gate] = model.to(dev.device).eval()
    return plain, prompted


def block_step(model: PromptedViT, h: torch.Tensor, prefix: torch.Tensor, dev: Device,
               ) -> Callable[[], torch.Tensor]:
    """Forward of prompted block 0 as in ``PromptedViT.forward_features``; returns the loss."""
    block = model.vit.blocks[0]

    def forward() -> torch.Tensor:
        with dev.autocast():
            attn = block.attn(block.norm1(h), prefix=prefix, alpha=model.prompt.alpha(0),
                              tau=model.prompt.tau(0))
            out = h + block.drop_path1(block.ls1(attn))
            out = out + block.drop_path2(block.ls2(block.mlp(block.norm2(out))))
        return out.float().square().mean()

    return forward


def vit_step(model: PromptedViT, x: torch.Tensor, ids: torch.Tensor, dev: Device,
             ) -> Callable[[], torch.Tensor]:
    """Prompted ViT forward with per-sample prefixes; the loss reaches the prompts."""
    def forward() -> torch.Tensor:
        with dev.autocast():
            tokens = model.forward_features(x, ids)
        return tokens[:, 0].float().square().mean()

    return forward


def with_backward(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        forward().backward()

    return step


def set_path(model: PromptedViT, path: str) -> None:
    model.set_fused(path == "fused")


def run_with_path(model: PromptedViT, path: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with ``model`` switched to ``path`` for the duration of the call."""
    def call() -> object:
        set_path(model, path)
        return fn()

    return call


def clear_grads(models: dict[str, PromptedViT], *tensors: torch.Tensor) -> None:
    for model in models.values():
        model.zero_grad(set_to_none=True)
    for t in tensors:
        t.grad = None


# ---------------------------------------------------------------------------- main
def measure(dev: Device, batch: int, repeats: int, prompt_length: int, image_size: int,
            ) -> dict[str, Any]:
    plain, prompted = build_models(dev, prompt_length, image_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=g).to(dev.device)
    ids = (torch.arange(batch) % 10).to(dev.device)  # different tasks in one batch
    frozen = [p for p in plain.parameters()] + [
        p for m in prompted.values() for p in m.vit.parameters()]
    n_tokens = (image_size // 16) ** 2 + 1
    results: dict[str, Any] = {}

    # 1. one prompted block ----------------------------------------------------------------
    h = torch.randn(batch, n_tokens, 768, generator=g).to(dev.device).requires_grad_(True)
    block_cfgs, block_mem = {}, {}
    for gate, model in prompted.items():
        prefix = model.prompt.gather(ids)[0].detach().clone().requires_grad_(True)
        for path in PATHS:
            fwd = block_step(model, h, prefix, dev)
            block_cfgs[f"{gate}/{path}"] = run_with_path(model, path, with_backward(fwd))
            set_path(model, path)
            block_mem[f"{gate}/{path}"] = measure_memory(fwd, frozen, dev)
    log.info("block: timing %d configurations x %d repeats", len(block_cfgs), repeats)
    block_time = interleaved_medians(block_cfgs, dev, repeats)
    results["block_fwd_bwd"] = {k: {**block_time[k], **block_mem[k]} for k in block_cfgs}
    clear_grads(prompted, h)

    # 2. whole prompted ViT-B/16, forward + backward -----------------------------------------
    vit_cfgs, vit_mem = {}, {}
    for gate, model in prompted.items():
        for path in PATHS:
            fwd = vit_step(model, x, ids, dev)
            vit_cfgs[f"{gate}/{path}"] = run_with_path(model, path, with_backward(fwd))
            set_path(model, path)
            vit_mem[f"{gate}/{path}"] = measure_memory(fwd, frozen, dev)
            clear_grads(prompted)
    log.info("ViT-B/16 fwd+bwd: timing %d configurations x %d repeats", len(vit_cfgs), repeats)
    vit_time = interleaved_medians(vit_cfgs, dev, repeats)
    results["vit_fwd_bwd"] = {k: {**vit_time[k], **vit_mem[k]} for k in vit_cfgs}
    clear_grads(prompted)

    # 3. forward only: plain timm vs prompted (fused path) --------------------------------
    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad(), dev.autocast():
                return fn()
        return call

    for model in prompted.values():
        set_path(model, "fused")
    fwd_cfgs = {
        "plain_timm": no_grad(lambda: plain.forward_features(x)),
        "linear": no_grad(lambda: prompted["linear"].forward_features(x, ids)),
        "norga": no_grad(lambda: prompted["norga"].forward_features(x, ids)),
    }
    fwd_repeats = repeats + 2  # forward passes are cheaper: a steadier median
    log.info("forward: timing %d configurations x %d repeats", len(fwd_cfgs), fwd_repeats)
    results["forward"] = interleaved_medians(fwd_cfgs, dev, fwd_repeats)
    return results


def sdpa_backends(dev: Device) -> dict[str, str]:
    """Which SDPA kernel autograd records, with no bias, a constant bias and a bias that needs
    a gradient, and on the fused NoRGa path of :class:`PrefixAttention` in training.

    The name of the backward node tells the kernel: a fused kernel has its own backward node
    (``ScaledDotProduct...Backward``); the math fallback ends in a view / matmul node and keeps
    the attention matrix.
    """
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 32, generator=g).to(dev.device) for _ in range(3))
    q.requires_grad_(True)
    bias = torch.randn(2, 4, 16, 16, generator=g).to(dev.device)
    out = {}
    with dev.autocast():
        for label, mask in (("no_bias", None), ("constant_bias", bias),
                            ("bias_requiring_grad", bias.clone().requires_grad_(True))):
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out[label] = type(o.grad_fn).__name__
        attn = PrefixAttention(nn.Linear(128, 384), nn.Linear(128, 128), 4, gate="norga",
                               activation="tanh", fused=True).to(dev.device).train()
        x = torch.randn(2, 16, 128, generator=g).to(dev.device)
        prefix = torch.randn(2, 2, 5, 4, 32, generator=g).to(dev.device).requires_grad_(True)
        o = attn(x, prefix=prefix, alpha=torch.tensor(1.0, requires_grad=True))
        out["norga_prefix_attention"] = sdpa_backward_node(o) or "none (math fallback)"
    return out


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """fused/reference (time, saved memory), NoRGa/plain and NoRGa/linear (forward time)."""
    out: dict[str, Any] = {}
    for level in ("block_fwd_bwd", "vit_fwd_bwd"):
        for gate in GATES:
            ref, fused = results[level][f"{gate}/reference"], results[level][f"{gate}/fused"]
            entry = {
                "time": fused["median_s"] / ref["median_s"],
                "saved_for_backward": (fused["saved_for_backward_MiB"]
                                       / ref["saved_for_backward_MiB"]),
            }
            if "cuda_peak_MiB" in fused:
                entry["cuda_peak"] = fused["cuda_peak_MiB"] / ref["cuda_peak_MiB"]
            out[f"{level}/{gate}/fused_over_reference"] = entry
    fwd = results["forward"]
    out["forward/norga_over_plain"] = fwd["norga"]["median_s"] / fwd["plain_timm"]["median_s"]
    out["forward/linear_over_plain"] = fwd["linear"]["median_s"] / fwd["plain_timm"]["median_s"]
    out["forward/norga_over_linear"] = fwd["norga"]["median_s"] / fwd["linear"]["median_s"]
    vit = results["vit_fwd_bwd"]
    out["vit_fwd_bwd/norga_over_linear_fused"] = (vit["norga/fused"]["median_s"]
                                                  / vit["linear/fused"]["median_s"])
    return out


def target_check(r: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue 8 item 3 with the measured value and whether it is met."""
    checks: dict[str, Any] = {}
    for level in ("block_fwd_bwd", "vit_fwd_bwd"):
        for gate in GATES:
            e = r[f"{level}/{gate}/fused_over_reference"]
            checks[f"{level}/{gate}: fused not slower than reference"] = {
                "value": e["time"], "met": e["time"] <= TARGETS["fused_over_reference_time_max"]}
            checks[f"{level}/{gate}: fused saves less for backward"] = {
                "value": e["saved_for_backward"],
                "met": e["saved_for_backward"] < TARGETS["fused_over_reference_saved_bytes_max"]}
    checks["NoRGa forward within 1.10x of plain timm"] = {
        "value": r["forward/norga_over_plain"],
        "met": r["forward/norga_over_plain"] <= TARGETS["norga_over_plain_forward_max"]}
    checks["NoRGa forward within 1.03x of linear"] = {
        "value": r["forward/norga_over_linear"],
        "met": r["forward/norga_over_linear"] <= TARGETS["norga_over_linear_forward_max"]}
    return checks


def machine(dev: Device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
    }
    if dev.cuda:
        info["gpu"] = torch.cuda.get_device_name(dev.device)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 4 (CPU) / 16 (GPU), 2 repeats: about a minute on 2 cores")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--batch-size", type=int, help="default 8 on the CPU, 64 on a GPU")
    parser.add_argument("--repeats", type=int, help="timed rounds after one warm-up (default 3)")
    parser.add_argument("--prompt-length", type=int, default=5, help="L_p (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    dev = Device(name)
    batch = args.batch_size or ((16 if dev.cuda else 4) if args.quick else
                                (64 if dev.cuda else 8))
    repeats = args.repeats or (2 if args.quick else 3)
    if batch <= 0 or repeats <= 0 or args.prompt_length <= 0:
        parser.error("--batch-size, --repeats and --prompt-length must be positive")
    t0 = time.time()
    log.info("device %s (%s), batch %d, L_p %d, %d repeats", dev.device, dev.precision, batch,
             args.prompt_length, repeats)
    results = measure(dev, batch, repeats, args.prompt_length, 224)
    r = ratios(results)
    checks = target_check(r)
    backends = sdpa_backends(dev)
    gpu_note = (f"measured on {torch.cuda.get_device_name(dev.device)} under bf16 autocast"
                if dev.cuda else
                "no CUDA device on this machine: CPU float32 only; the GPU bf16 path "
                "(autocast, torch.cuda.max_memory_allocated) is written but was not run here")
    payload = {
        "kind": "attention",
        "version": 1,
        "device": str(dev.device),
        "precision": dev.precision,
        "gpu": gpu_note,
        "machine": machine(dev, args.threads),
        "model": "ViT-B/16 (vit-b16-random), 224x224, prefixes in blocks 0-4, per-sample",
        "batch_size": batch,
        "prompt_length": args.prompt_length,
        "repeats": repeats,
        "quick": args.quick,
        "timing": "median of interleaved rounds after one warm-up round",
        "memory": "bytes autograd saves for backward (saved_tensors_hooks, one count per "
                  "storage, frozen parameters excluded)"
                  + ("; cuda_peak_MiB: max_memory_allocated above the resting allocation"
                     if dev.cuda else ""),
        "results": results,
        "sdpa_backward_node": backends,
        "ratios": r,
        "targets": checks,
        "seconds": round(time.time() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "attention.json", payload)

    print(f"\n{dev.device} {dev.precision}, batch {batch}, L_p {args.prompt_length}, "
          f"{repeats} repeats ({payload['seconds']:.0f}s)")
    for level in ("block_fwd_bwd", "vit_fwd_bwd"):
        for key, v in results[level].items():
            print(f"  {level:<14} {key:<17} {v['median_s'] * 1e3:9.1f} ms   "
                  f"saved for backward {v['saved_for_backward_MiB']:8.1f} MiB")
    for key, v in results["forward"].items():
        print(f"  {'forward':<14} {key:<17} {v['median_s'] * 1e3:9.1f} ms")
    print("ratios:")
    for key, value in r.items():
        if isinstance(value, dict):
            print(f"  {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in value.items()))
        else:
            print(f"  {key}: {value:.3f}")
    print("targets:")
    for key, c in checks.items():
        print(f"  [{'met' if c['met'] else 'MISSED'}] {key}: {c['value']:.3f}")
    print(f"  note: {gpu_note}")
    print("SDPA backward node (fused kernel vs math fallback): "
          + ", ".join(f"{k} {v}" for k, v in backends.items()))
    print(f"wrote {args.out / 'attention.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
