"""Shared single-stage pipeline of the key-matched prompt baselines (L2P, DualPrompt, S-Prompt++).

docs/cl-background.md#key-matched-baselines, "shared mechanics": the query is the frozen,
prompt-free pre-logits feature (an extra forward pass in training and at test time); prompts are
chosen by cosine similarity to learnable keys; the loss is

    CE(logits masked to the current task) - pull_coeff * sum_b sum_{selected j} cos(q_b, K_j) / B

with Adam (weight decay 0) at ``lr * batch_size / 256`` re-created per task, gradient clipping,
and no task-identity model or head alignment. The learning-rate schedule is built for task 0
only (the original code never re-creates it, so later tasks run at the base rate);
``schedule_first_task_only=False`` rebuilds it per task.

Selection is per sample. ``KeyedOptions.batchwise_prompt`` reproduces the original batch-majority
vote for comparison only (ties to the smaller id; ``legacy_vote_ties``: the official
``torch.topk`` order, :func:`cl.models.prompt_pools.official_vote`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cl.methods.base import Task
from cl.methods.losses import class_mask, masked_logits
from cl.methods.schedules import build_epoch_scheduler
from cl.methods.training import EpochMeter, FrozenViTMethod, optimizer_step
from cl.models.prompt_pools import key_pull, majority_vote, official_vote
from cl.options import MethodOptions, Scheduler
from cl.run.seeding import torch_generator


@dataclass
class KeyedOptions(MethodOptions):
    """What every key-matched method has (subclasses add their prompts)."""

    pull_coeff: float = 1.0
    # the learning-rate schedule of task 0 only (the original code never re-creates it)
    schedule_first_task_only: bool = True
    scheduler: Scheduler = "step"
    # the official code's batch-majority prompt vote, and its tie order (cl/protocol.py)
    batchwise_prompt: bool = False
    legacy_vote_ties: bool = False

    def check(self) -> None:
        self._non_negative("pull_coeff")


class KeyedPromptMethod(FrozenViTMethod):
    """Base class: frozen query, cosine key matching, CE minus key pull, one pass per phase.

    Subclasses build the prompted model (:meth:`_build_model`), say which prompts a training
    batch uses (:meth:`_train_ids`) and which keys may be matched at test time
    (:meth:`_allowed_keys`). Constructor arguments: :class:`cl.methods.training.FrozenViTMethod`
    (options: :class:`KeyedOptions` and the subclass's own).
    """

    options_type: ClassVar[type[MethodOptions]] = KeyedOptions
    options: KeyedOptions

    def _build(self, vit: nn.Module) -> None:
        config = self.config
        self.model = self._build_model(vit, torch_generator(config.seed, "prompt-init"))
        self.model.to(self.device).eval()  # frozen ViT without dropout: eval mode throughout
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        # lr scaling of the original code: lr * batch / 256
        self.scale = config.batch_size / 256.0

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _build_model(self, vit: nn.Module, generator: torch.Generator) -> nn.Module:
        """The prompted model (a :class:`cl.models.prompt_pools._KeyedViT`)."""

    @abc.abstractmethod
    def _train_ids(self, query: torch.Tensor, task: int) -> torch.Tensor:
        """Prompt ids ``(B, k)`` used for a training batch of ``task``."""

    @abc.abstractmethod
    def _features(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Prompted pooled features ``(B, C)`` for prompt ids ``(B, k)``."""

    @property
    @abc.abstractmethod
    def top_k(self) -> int:
        """Prompts selected per sample."""

    def _allowed_keys(self) -> torch.Tensor | None:
        """Boolean ``(pool,)`` mask of keys that may be matched at test time (None: all)."""
        return None

    def _tasks_from_ids(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Predicted task per sample from the chosen prompts (None: no task identity)."""
        return None

    def _oracle_ids(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Prompt ids used when the true task is known (default: the usual selection)."""
        return self.select(x)

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ task setup
    def _build_optimizer(self, t: int) -> None:
        cfg = self.config
        self.optimizer = torch.optim.Adam(
            self._trainable(), lr=cfg.lr * self.scale, betas=(0.9, 0.999), eps=1e-8,
            weight_decay=0.0,
        )
        stale = self.options.schedule_first_task_only and t > 0
        self.scheduler = None if stale else build_epoch_scheduler(
            self.optimizer, self.options.scheduler, cfg.epochs
        )

    def begin_task(self, task: Task) -> None:
        self.task = task
        self.task_index = task.index
        self._build_optimizer(task.index)

    # ------------------------------------------------------------------ training
    def train_task(self, loader: DataLoader) -> None:
        assert self.task is not None, "begin_task must be called first"
        cfg = self.config
        t = self.task.index
        mask = class_mask(self.num_classes, self.task.classes, self.device)
        pull_coeff = self.options.pull_coeff
        params = self._trainable()
        for epoch in range(cfg.epochs):
            meter = EpochMeter("loss", "key_similarity")
            for step, x, y in self._batches(loader, f"task {t} epoch {epoch}"):
                query = self.model.query(x)  # frozen, prompt-free: no graph
                ids = self._train_ids(query, t)
                logits = masked_logits(self.model.classify(self._features(x, ids)), mask)
                pull = key_pull(query, self.model.key, ids)
                loss = F.cross_entropy(logits, y) - pull_coeff * pull
                optimizer_step(self.optimizer, loss, phase="train", task=t, epoch=epoch,
                               step=step, clip_grad=cfg.clip_grad, params=params)
                meter.update(logits, y, loss=loss, key_similarity=pull)
            if self.scheduler is not None:
                self.scheduler.step()
            self.log(meter.record("train", t, epoch, lr=self.optimizer.param_groups[0]["lr"]))

    def end_task(self, task: Task) -> None:
        """Nothing to consolidate: no statistics and no head alignment
        (docs/cl-background.md#key-matched-baselines)."""

    # ------------------------------------------------------------------ inference
    def select_from_query(self, query: torch.Tensor) -> torch.Tensor:
        """Prompt ids ``(B, k)`` chosen by each sample's own query (or the legacy batch vote)."""
        ids, _ = self.model.match(query, self.top_k, self._allowed_keys())
        if self.options.batchwise_prompt:
            ids = (official_vote(ids, self.top_k, self.model.pool_size)
                   if self.options.legacy_vote_ties else majority_vote(ids, self.top_k))
        return ids

    @torch.no_grad()
    def select(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`select_from_query` on the frozen query of images ``x``."""
        return self.select_from_query(self.model.query(x.to(self.device)))

    @torch.no_grad()
    def predict_with_tasks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.task_index >= 0, "no task has been learned yet"
        x = x.to(self.device)
        ids = self.select(x)
        return self.model.classify(self._features(x, ids)), self._tasks_from_ids(ids)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_with_tasks(x)[0]

    @torch.no_grad()
    def predict_oracle(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Task-incremental logits: restricted to the true task's classes."""
        x, task_ids = x.to(self.device), task_ids.to(self.device)
        logits = self.model.classify(self._features(x, self._oracle_ids(x, task_ids)))
        return self._restrict_to_tasks(logits, task_ids)

    # ------------------------------------------------------------------ state
    def _learned_state(self) -> dict[str, torch.Tensor]:
        # the frozen ViT is rebuilt from the backbone tag; keep only what is learned
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()
                if not k.startswith("vit.")}

    def state_dict(self) -> dict[str, Any]:
        """Prompts, keys, head, optimizer and scheduler state (no random stream is used)."""
        return {
            "method": self.name,
            "task_index": self.task_index,
            "options": self.options.to_dict(),
            "model": self._learned_state(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_checkpoint(state)
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        missing = [k for k in missing if not k.startswith("vit.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit the model: missing {missing}, "
                             f"unexpected {unexpected}")
        if self._restore_task(state):
            self._build_optimizer(self.task_index)
            if state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            if state["scheduler"] is not None and self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
