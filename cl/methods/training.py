"""What every method on a frozen ViT shares: construction, the training step, epoch bookkeeping,
Gaussian head alignment, masks for inference and checkpoint restore.

:class:`FrozenViTMethod` is the base of HiDe-Prompt / NoRGa, the key-matched prompt baselines,
CODA-Prompt and SMoPE. Its constructor takes the engine's arguments, takes the method's typed
options from ``config.method_options`` (:meth:`cl.methods.base.Method.resolve_options`: checked
again, and a plain mapping turned into the method's ``options_type``) and then calls the
subclass's :meth:`FrozenViTMethod._build`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cl.methods.base import LogFn, Method, ProgressFn, Task
from cl.methods.losses import class_mask, masked_logits
from cl.numerics import check_finite_loss
from cl.options import CLConfig
from cl.stats.gaussian import GaussianClassStats


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    *,
    phase: str,
    task: int,
    epoch: int,
    step: int,
    clip_grad: float = 0.0,
    params: Iterable[nn.Parameter] | None = None,
) -> None:
    """One training step: non-finite check, zero grad, backward, optional clipping, step.

    :func:`cl.numerics.check_finite_loss` raises :class:`cl.numerics.NonFiniteLossError` (naming
    ``phase``, ``task``, ``epoch`` and ``step``) before the parameters are touched. With
    ``clip_grad > 0`` the gradient norm of ``params`` is clipped to it.
    """
    check_finite_loss(loss, phase=phase, task=task, epoch=epoch, step=step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()


class EpochMeter:
    """Sample-weighted means of loss terms and the training accuracy over one epoch."""

    def __init__(self, *terms: str) -> None:
        self.sums: dict[str, float] = dict.fromkeys(terms or ("loss",), 0.0)
        self.correct = 0
        self.total = 0

    def update(self, logits: torch.Tensor, y: torch.Tensor, **terms: torch.Tensor | None) -> None:
        """Add a batch; a term given as ``None`` counts as 0."""
        n = len(y)
        for name, value in terms.items():
            self.sums[name] += float(value.detach()) * n if value is not None else 0.0
        self.correct += int((logits.argmax(1) == y).sum())
        self.total += n

    def record(self, phase: str, task: int, epoch: int, **extra: Any) -> dict[str, Any]:
        """The log record: phase, task, epoch, the term means, ``train_acc``, then ``extra``."""
        n = max(self.total, 1)
        return {"phase": phase, "task": task, "epoch": epoch,
                **{name: value / n for name, value in self.sums.items()},
                "train_acc": 100.0 * self.correct / n, **extra}


class FrozenViTMethod(Method):
    """Base class of the methods on a frozen ViT with one head over all classes.

    Parameters
    ----------
    config:
        Resolved run configuration; the method's hyperparameters are its typed options,
        ``config.method_options`` (an instance of :attr:`options_type`, kept as
        ``self.options``).
    vit:
        Frozen timm ``VisionTransformer`` (``num_classes=0``).
    num_classes:
        Size of the single classifier head.
    task_classes:
        Class ids of every task.
    device:
        Where to compute.
    """

    def __init__(
        self,
        config: CLConfig,
        vit: nn.Module,
        num_classes: int,
        task_classes: list[list[int]],
        device: torch.device | str = "cpu",
        progress: ProgressFn | None = None,
        log: LogFn | None = None,
    ) -> None:
        super().__init__(progress, log)
        self.config = config
        self.options = self.resolve_options(config.method_options)
        self.device = torch.device(device)
        self.num_classes = num_classes
        self.task_classes = [list(map(int, c)) for c in task_classes]
        class_to_task = torch.full((num_classes,), -1, dtype=torch.long)
        for t, classes in enumerate(self.task_classes):
            class_to_task[classes] = t
        self.class_to_task = class_to_task.to(self.device)
        self.task: Task | None = None
        self.task_index = -1  # last task begun
        self._build(vit)

    @abc.abstractmethod
    def _build(self, vit: nn.Module) -> None:
        """Build the model(s) and the method's own state (called at the end of ``__init__``)."""

    # ------------------------------------------------------------------ training helpers
    def _batches(self, loader: DataLoader, desc: str) -> Iterator[tuple[int, torch.Tensor,
                                                                        torch.Tensor]]:
        """``(step, x, y)`` of ``loader`` on the device, with the progress bar ``desc``."""
        for step, (x, y) in enumerate(self.progress(loader, desc)):
            yield step, x.to(self.device), y.to(self.device)

    def _align_on_gaussians(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        stats: GaussianClassStats,
        task: Task,
        epochs: int,
        n_per_class: int,
        phase: str,
        step_per_iteration: bool,
    ) -> None:
        """Classifier alignment on Gaussian samples of all seen classes
        (docs/cl-background.md#tii-model, #statistics-and-tap and #smope-recipe).

        Per epoch ``n_per_class`` samples of every seen class are drawn from ``stats`` with
        ``self.sample_gen`` and shuffled; as in the original code, #old-classes iterations of
        ``n_per_class`` samples follow (the tail is unused). ``scheduler`` steps after every
        iteration or after every epoch.
        """
        seen, n_old = task.seen_classes, len(task.old_classes)
        mask = class_mask(self.num_classes, seen, self.device)
        n = n_per_class
        for epoch in range(epochs):
            feats, labels = stats.sample(seen, n, self.sample_gen)
            order = torch.randperm(labels.shape[0], generator=self.sample_gen)
            feats, labels = feats[order].to(self.device), labels[order].to(self.device)
            loss_sum = 0.0
            for i in range(n_old):
                xb, yb = feats[i * n:(i + 1) * n], labels[i * n:(i + 1) * n]
                loss = F.cross_entropy(masked_logits(forward(xb), mask), yb)
                optimizer_step(optimizer, loss, phase=phase, task=task.index, epoch=epoch, step=i)
                if step_per_iteration:
                    scheduler.step()
                loss_sum += float(loss.detach())
            if not step_per_iteration:
                scheduler.step()
            self.log({"phase": phase, "task": task.index, "epoch": epoch,
                      "loss": loss_sum / max(n_old, 1)})

    # ------------------------------------------------------------------ inference
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unmasked logits of one prompted pass; single-pass methods (CODA, SMoPE) define it
        and inherit :meth:`predict` / :meth:`predict_oracle`, the others override those."""
        raise NotImplementedError(f"{type(self).__name__} must define _logits or predict")

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the classes seen so far (others ``-inf``)."""
        return masked_logits(self._logits(x), self._seen_mask())

    @torch.no_grad()
    def predict_oracle(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Logits restricted to each sample's true task."""
        return self._restrict_to_tasks(self._logits(x), task_ids)

    # ------------------------------------------------------------------ inference helpers
    def _seen_mask(self) -> torch.Tensor:
        """Boolean ``(num_classes,)`` mask of the classes of the tasks learned so far."""
        seen = [c for ts in self.task_classes[: self.task_index + 1] for c in ts]
        return class_mask(self.num_classes, seen, self.device)

    def _restrict_to_tasks(self, logits: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """``logits`` with every class outside each sample's task ``task_ids`` set to -inf."""
        allowed = self.class_to_task.unsqueeze(0) == task_ids.to(self.device).unsqueeze(1)
        return logits.masked_fill(~allowed, float("-inf"))

    # ------------------------------------------------------------------ state helpers
    def _check_checkpoint(self, state: dict[str, Any]) -> None:
        if state["method"] != self.name:
            raise ValueError(f"checkpoint is for method {state['method']!r}, not {self.name!r}")

    def _restore_task(self, state: dict[str, Any]) -> bool:
        """Set the last task begun from ``state``; whether one was (then optimizers follow)."""
        self.task_index = int(state["task_index"])
        if self.task_index < 0:
            return False
        t = self.task_index
        self.task = Task(t, self.task_classes[t], self.task_classes)
        return True
