"""Mixed precision (bf16 autocast) and ``torch.compile`` for the models' forward passes.

``--precision fp32`` (the default) changes nothing: every number is float32 as before, so runs
reproduce bit for bit. ``--precision bf16`` runs the ViT forward passes of a method under
``torch.autocast(dtype=torch.bfloat16)`` and casts what they return back to float32, so that:

* heads, losses and gradients of the trainable parameters are computed in float32 (the head
  and the loss sit outside the autocast region);
* class statistics keep their float64 sums and the Gaussian replay samples stay float32
  (:mod:`cl.stats.gaussian` never runs under autocast);
* parameters stay float32 (autocast casts copies for the matmuls only).

The switch works on the models a method holds (``method.model``), without changes to the
method code: :func:`apply_precision` replaces the instance attributes ``forward_features`` and
``query`` (the frozen query pass of the key-matched baselines) by wrappers. Every method on a
frozen ViT routes its ViT passes through one of these two entry points.

``--compile`` wraps the same entry points with ``torch.compile``. Compilation happens at the
first call; if it fails there, :class:`CompileError` says so in one line and names the flag.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, get_args

import torch
from torch import nn

from norga.choices import check_choice

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
#: Model methods that run a full ViT pass (wrapped by :func:`apply_precision`).
ENTRY_POINTS: tuple[str, ...] = ("forward_features", "query")


class CompileError(RuntimeError):
    """``torch.compile`` failed on a model forward (re-run without ``--compile``)."""


@contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """bf16 autocast on ``device`` for ``precision="bf16"``, nothing for ``"fp32"``."""
    if check_choice("precision", precision, PRECISIONS) == "fp32":
        with nullcontext():
            yield
        return
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        yield


def to_float32(value: Any) -> Any:
    """``value`` with every low-precision floating tensor cast to float32.

    Walks tuples, lists, dicts and dataclass instances (SMoPE returns its routing as a list of
    dataclasses), so that nothing in bf16 leaks into the losses.
    """
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.dtype in (torch.bfloat16, torch.float16):
            return value.float()
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(to_float32(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: to_float32(getattr(value, f.name))
                   for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def _wrap(fn: Callable[..., Any], *, device: torch.device, precision: str,
          compiled: bool, label: str) -> Callable[..., Any]:
    """``fn`` under autocast (if bf16), compiled (if asked), outputs cast back to float32."""
    inner = torch.compile(fn) if compiled else fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with autocast(device, precision):
            if not compiled:
                out = inner(*args, **kwargs)
            else:
                try:
                    out = inner(*args, **kwargs)
                except Exception as exc:  # dynamo / inductor failures come in many types
                    raise CompileError(
                        f"torch.compile failed for {label}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; re-run without "
                        "--compile") from exc
        return to_float32(out) if precision != "fp32" else out

    run.__wrapped_precision__ = (precision, compiled)  # type: ignore[attr-defined]
    return run


def apply_to_model(model: nn.Module, *, device: torch.device | str, precision: str = "fp32",
                   compile: bool = False) -> list[str]:
    """Wrap the ViT entry points of ``model`` in place; returns the names wrapped.

    ``fp32`` without ``compile`` leaves the model untouched (the exact default). Wrapping twice
    is refused (``ValueError``), so a model cannot end up under two autocast layers.
    """
    precision = check_choice("precision", precision, PRECISIONS)
    if precision == "fp32" and not compile:
        return []
    device = torch.device(device)
    wrapped = []
    for name in ENTRY_POINTS:
        fn = getattr(model, name, None)
        if fn is None or not callable(fn):
            continue
        if hasattr(fn, "__wrapped_precision__"):
            raise ValueError(f"{type(model).__name__}.{name} is already wrapped for "
                             f"precision/compile {fn.__wrapped_precision__}")
        setattr(model, name, _wrap(fn, device=device, precision=precision, compiled=compile,
                                   label=f"{type(model).__name__}.{name}"))
        wrapped.append(name)
    return wrapped


def apply_precision(method: object, *, device: torch.device | str, precision: str = "fp32",
                    compile: bool = False) -> dict[str, list[str]]:
    """Apply ``precision`` / ``compile`` to the model(s) of a CL method.

    Every ``nn.Module`` attribute of ``method`` that has a ViT entry point
    (:data:`ENTRY_POINTS`) is wrapped; small trainable heads on pooled features (the TII
    adapter) stay float32. Returns ``{attribute: [wrapped entry points]}``.

    bf16 on a CPU works (torch has CPU bf16 autocast) but is usually slower than float32 there;
    a warning says so. ``compile=True`` needs ``torch.compile`` (torch >= 2.0); on a CPU the
    first call compiles with inductor and a C++ compiler, which takes minutes.
    """
    precision = check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    if precision == "bf16" and device.type == "cpu":
        warnings.warn("precision bf16 on the CPU: autocast works but is usually slower than "
                      "fp32 there; it is meant for GPUs", RuntimeWarning, stacklevel=2)
    if compile and not hasattr(torch, "compile"):
        raise CompileError(f"--compile needs torch.compile (torch >= 2.0), found torch "
                           f"{torch.__version__}; re-run without --compile")
    done: dict[str, list[str]] = {}
    for attr, module in vars(method).items():
        if isinstance(module, nn.Module):
            names = apply_to_model(module, device=device, precision=precision, compile=compile)
            if names:
                done[attr] = names
    if (precision != "fp32" or compile) and not done:
        raise ValueError(f"{type(method).__name__} holds no model with "
                         f"{' or '.join(ENTRY_POINTS)}; cannot apply precision={precision} "
                         f"compile={compile}")
    if done:
        log.info("precision %s, compile %s applied to %s", precision, compile, done)
    return done
