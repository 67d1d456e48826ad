"""SMoPE: one shared prompt as a sparse mixture of per-head prompt experts (single pass).

docs/cl-background.md#smope. Per task ``t``:

1. ``begin_task`` (``t > 0``): flag the frequently used experts of every (layer, head) from the
   accumulated activation counts and snapshot the expert keys as the "old" prototypes.
2. ``train_task``: task 0 starts with a dense warm-up (all experts, ``warmup_fraction`` of the
   epochs, no router loss, its own optimizer and schedule). Then the top-K phase: per sample and
   head the ``K`` experts with the best proxy score minus the adaptive noise (flagged experts
   get ``eps * score range``) are used. Loss ``CE(logits masked to task t) + a_router * L_router
   + a_proto * L_proto``. AdamW, experts at ``prompt_lr_mult * lr``, head at ``lr``, a
   per-iteration cosine (``coswm``) or the CODA epoch cosine (CUB).
3. ``end_task``: one inference pass (top-K, no noise) over the task's training images counts the
   selected experts and stores Gaussian class statistics (mean + per-dim variance) of the
   prompted features; for ``t > 0`` the head is re-aligned on Gaussian samples of all seen
   classes (AdamW, per-iteration cosine).
4. Inference: a single prompted pass with top-K experts; logits of the seen classes.

Departures from the original code (docs/cl-background.md#smope-pitfalls), each with an option to
reproduce it:

* Expert counts, flags and old keys are part of :meth:`SMoPE.state_dict` (the original lost them
  on reload, so its final evaluation ran without them).
* "Frequently used" is the paper's rule, ``F_j >= mean over all N_p experts``, recomputed from
  the accumulated counts at every task start (``legacy_frequency_flags``: mean over the *used*
  experts, flags sticky).
* The router loss uses the scaled proxy ``s_bar = q_bar . p^K / sqrt(D)`` of the paper
  (``legacy_unscaled_router``: unscaled, as coded). Top-K and the noise are scale-invariant.
* No "freeze" iterations at lr 1e-6 and the true number of iterations per epoch in ``coswm``
  (``freeze_iters`` and ``iter_step`` reproduce the freeze and the nominal length); every
  iteration runs at its scheduled lr (``legacy_scheduler_quirks``: the first training iteration
  of a phase at the base lr and the first alignment step at 10x ``ca_lr``, side effects of the
  original scheduler's constructor).
* Statistics and counts use the task's training images with the test transform (the engine's
  statistics loader), not the training augmentation (``legacy_stats_train_transform``: counts
  over the training loader and statistics over the training images with the train transform,
  in order, as the original; single-process runs only).

``--protocol official`` switches all of them on (:mod:`cl.protocol`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from cl.methods.base import Task, register_method
from cl.methods.coda_prompt import coda_cosine
from cl.methods.losses import class_mask, masked_logits
from cl.methods.training import EpochMeter, FrozenViTMethod, optimizer_step
from cl.models.smope_prefix import Routing, SMoPEViT, adaptive_noise
from cl.options import AttentionImpl, MethodOptions
from cl.presets import PresetTable
from cl.run.seeding import torch_generator
from cl.stats.gaussian import StatsMethod, build_class_stats

MIN_LR = 1e-6

# "coswm" (per-iteration cosine), "cosine" (CODA epoch cosine), "constant"
SMoPESchedule = Literal["coswm", "cosine", "constant"]
SCHEDULES: tuple[SMoPESchedule, ...] = get_args(SMoPESchedule)


@dataclass
class SMoPEOptions(MethodOptions):
    """SMoPE's options (defaults: the CIFAR-100 script values), its head alignment (TAP) and
    class statistics."""

    layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    num_experts: int = 25  # N_p per head and layer (script "prompt length" 50 = 2 * N_p)
    top_k: int = 5
    router_coef: float = 1e-5
    proto_coef: float = 1e-5
    noise_eps: float = 0.4
    prompt_lr_mult: float = 5.0  # experts train at 5 x lr, the head at lr
    warmup_fraction: float = 0.5  # task 0: dense warm-up of round(0.5 * epochs) epochs
    schedule: SMoPESchedule = "coswm"
    freeze_iters: int = 0  # coswm iterations at 1e-6 first (original scripts: 80 / 40 / 20)
    tap_weight_decay: float = 5e-4
    eval_unused_penalty: float = 0.0  # > 0: at test, never-used experts lose this x score range
    legacy_frequency_flags: bool = False
    legacy_unscaled_router: bool = False
    iter_step: int = 0  # > 0: coswm spans iter_step x epochs (original: nominal 40); 0: true count
    legacy_scheduler_quirks: bool = False  # first iteration at the base lr, first TAP step at 10x
    legacy_stats_train_transform: bool = False  # counts + statistics with the train augmentation
    attention: AttentionImpl = "fused"  # prefix-attention implementation
    # head alignment (TAP) on Gaussian samples and the class statistics behind them
    tap_epochs: int = 30
    ca_lr: float = 0.005
    tap_samples_mult: int = 5
    stats_method: StatsMethod = "covariance"
    n_centroids: int = 10  # k-means clusters per class for stats_method="multi-centroid"

    def check(self) -> None:
        if not 0 < self.top_k <= self.num_experts:
            self._refuse("top_k", "must be in [1, num_experts]")
        self._non_negative("iter_step", "freeze_iters", "tap_epochs")
        self._positive("num_experts", "ca_lr", "tap_samples_mult", "n_centroids")


# ---------------------------------------------------------------------------- losses
def router_loss(scores: torch.Tensor, selected: torch.Tensor, eps: float) -> torch.Tensor:
    """SMoPE router loss of one layer (section 7.4).

    For every head and every selected expert ``j`` of a sample: the cross entropy of the scores,
    with ``eps * (max - min)`` added to the *non*-selected experts, against target ``j``; batch
    mean, summed over heads and the ``K`` selections.

    Parameters
    ----------
    scores:
        Proxy scores ``(B, H, N_p)``.
    selected:
        Selected experts ``(B, H, K)``.
    eps:
        Noise level (margin in units of the per-(sample, head) score range, detached).
    """
    spread = (scores.amax(-1, keepdim=True) - scores.amin(-1, keepdim=True)).detach()
    not_selected = torch.ones_like(scores).scatter(-1, selected, 0.0)
    logits = scores + eps * spread * not_selected
    nll = -logits.log_softmax(-1).gather(-1, selected)  # (B, H, K)
    return nll.sum(dim=(1, 2)).mean()


def prototype_loss(
    old_keys: torch.Tensor, keys: torch.Tensor, frequent: torch.Tensor, top_k: int
) -> torch.Tensor:
    """SMoPE prototype loss of one layer (section 7.4).

    Each frequently used old key ``p`` of head ``h`` is a prototype whose targets are its ``K``
    most similar old keys ``top-K_j (p . p^K_old,j)``; the loss is the cross entropy of
    ``p . p^K_current`` against each target, averaged over the prototypes of the head and summed
    over the ``K`` targets and the heads. Dot products are unscaled.

    Parameters
    ----------
    old_keys, keys:
        ``(H, N_p, D)`` snapshot at the task start and current keys.
    frequent:
        ``(H, N_p)`` boolean flags of the prototypes.
    top_k:
        Targets per prototype.
    """
    old_keys = old_keys.detach()
    k = min(top_k, old_keys.shape[1])
    targets = (old_keys @ old_keys.transpose(-2, -1)).topk(k, dim=-1).indices  # (H, N_p, K)
    logp = (old_keys @ keys.transpose(-2, -1)).log_softmax(-1)  # (H, N_p, N_p)
    nll = -logp.gather(-1, targets).sum(-1)  # (H, N_p): summed over the K targets
    weights = frequent.to(nll.dtype)
    per_head = (nll * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)
    return per_head.sum()


def frequent_experts(counts: torch.Tensor, legacy: bool = False) -> torch.Tensor:
    """Flags ``F_j >= threshold`` per (layer, head) from counts ``(L, H, N_p)``.

    The threshold is the mean count over all ``N_p`` experts (paper), or with ``legacy`` over
    the experts used at least once (original code). Heads with no counts flag nothing.
    """
    counts = counts.to(torch.float64)
    total = counts.sum(-1, keepdim=True)
    if legacy:
        threshold = total / (counts > 0).sum(-1, keepdim=True).clamp_min(1)
    else:
        threshold = total / counts.shape[-1]
    return (counts >= threshold) & (total > 0)


def coswm_factor(base: float, total: int, freeze: int) -> Callable[[int], float]:
    """Per-iteration lr factor: ``freeze`` iterations at 1e-6, then cosine from base to 1e-6."""
    span = max(total - freeze, 1)

    def factor(i: int) -> float:
        if i < freeze:
            return MIN_LR / base
        progress = min(i - freeze, span) / span
        lr = MIN_LR + 0.5 * (base - MIN_LR) * (1.0 + math.cos(math.pi * progress))
        return lr / base

    return factor


def first_at(value: float, factor: Callable[[int], float]) -> Callable[[int], float]:
    """``factor`` with iteration 0 replaced by ``value`` (the original scheduler's constructor
    resets the group lrs, so its first iteration runs at the base lr)."""
    return lambda i: value if i == 0 else factor(i)


@register_method("smope")
class SMoPE(FrozenViTMethod):
    """SMoPE on a frozen ViT: shared prompt experts in blocks 0-5, one forward pass.

    Constructor arguments: :class:`cl.methods.training.FrozenViTMethod`; SMoPE settings in
    ``config.method_options`` (:class:`SMoPEOptions`).
    """

    options_type = SMoPEOptions
    options: SMoPEOptions

    presets: ClassVar[PresetTable] = {
        # Shared recipe (section 7.5): AdamW wd 0, lr 0.005 head / 0.025 experts, batch 128, no
        # clipping; statistics = mean + per-dim variance; TAP head-only AdamW at 1e-5 (the
        # effective ca_lr / 10 of the code) for 50 epochs with batch x ratio samples per class.
        "*": dict(lr=0.005, batch_size=128, eval_batch_size=128, epochs=20, clip_grad=0.0,
                  stats_method="variance", tap_epochs=50, ca_lr=1e-5, tap_samples_mult=1),
        "cifar100": dict(method_options=dict(router_coef=1e-5, proto_coef=1e-5, noise_eps=0.4)),
        "cub200": dict(method_options=dict(router_coef=1e-5, proto_coef=5e-5, noise_eps=0.4,
                                           schedule="cosine")),
        # ImageNet-R, 10 tasks
        "imagenet-r": dict(lr=0.0025, batch_size=64, eval_batch_size=64, tap_samples_mult=6,
                           method_options=dict(router_coef=5e-5, proto_coef=1e-4, noise_eps=0.5)),
        # [unverified] no SMoPE script for 5-Datasets: CIFAR values.
        "5datasets": dict(method_options=dict(router_coef=1e-5, proto_coef=1e-5, noise_eps=0.4)),
        # Offline benchmarks: small and fast, tuned only to be clearly learnable (the tiny ViT has
        # 6 blocks, so layers 0-5 are all of them).
        "synthetic": dict(lr=0.01, batch_size=64, epochs=6, tap_epochs=10, ca_lr=1e-3,
                          method_options=dict(router_coef=1e-3, proto_coef=1e-3)),
        "digits": dict(lr=0.01, batch_size=64, epochs=10, tap_epochs=10, ca_lr=1e-3,
                       method_options=dict(router_coef=1e-3, proto_coef=1e-3)),
    }
    has_alignment = True

    def _build(self, vit: nn.Module) -> None:
        config, opts = self.config, self.options
        self.top_k = int(opts.top_k)
        self.model = SMoPEViT(
            vit,
            self.num_classes,
            num_experts=int(opts.num_experts),
            prompt_layers=opts.layers,
            fused=opts.attention == "fused",
            generator=torch_generator(config.seed, "smope-init"),
        ).to(self.device)
        self.model.eval()  # frozen ViT: no dropout / drop-path in play
        shape = tuple(self.model.experts.key.shape[:3])  # (layers, heads, experts)
        self.counts = torch.zeros(shape, dtype=torch.long)  # accumulated selections
        self.frequent = torch.zeros(shape, dtype=torch.bool)
        self.old_keys: torch.Tensor | None = None
        self.stats = build_class_stats(self.model.embed_dim, opts.stats_method, seed=config.seed,
                                       n_centroids=opts.n_centroids)
        self.sample_gen = torch_generator(config.seed, "gaussian-replay")
        self.optimizer: torch.optim.Optimizer | None = None
        self._train_loader: DataLoader | None = None

    # ------------------------------------------------------------------ task setup
    def _build_optimizer(self) -> torch.optim.Optimizer:
        lr = self.config.lr
        self.optimizer = torch.optim.AdamW(
            [{"params": list(self.model.experts.parameters()),
              "lr": lr * float(self.options.prompt_lr_mult)},
             {"params": list(self.model.head.parameters()), "lr": lr}],
            weight_decay=0.0,
        )
        return self.optimizer

    def begin_task(self, task: Task) -> None:
        t = task.index
        self.task, self.task_index = task, t
        if t > 0:
            flags = frequent_experts(self.counts, self.options.legacy_frequency_flags)
            # the original code never clears a flag; the paper recomputes them
            self.frequent = (self.frequent | flags) if self.options.legacy_frequency_flags \
                else flags
            self.old_keys = self.model.experts.key.detach().clone()
        self._build_optimizer()

    # ------------------------------------------------------------------ training
    def _penalties(self) -> list[Callable[[torch.Tensor], torch.Tensor | None]]:
        eps = float(self.options.noise_eps)
        flags = self.frequent.to(self.device)
        return [lambda s, f=flags[j]: adaptive_noise(s, f, eps) for j in range(flags.shape[0])]

    def _scheduler(self, epochs: int, iters_per_epoch: int) -> tuple[LambdaLR | None, bool]:
        """The phase's scheduler and whether it steps per iteration (else per epoch)."""
        kind = self.options.schedule
        if kind == "constant":
            return None, False
        if kind == "cosine":
            return LambdaLR(self.optimizer, coda_cosine(epochs)), False
        nominal = int(self.options.iter_step)
        total = epochs * (nominal if nominal > 0 else iters_per_epoch)
        freeze = int(self.options.freeze_iters)
        lambdas = [coswm_factor(g["lr"], total, freeze) for g in self.optimizer.param_groups]
        if self.options.legacy_scheduler_quirks:  # iteration 0 runs at the base lr
            lambdas = [first_at(1.0, f) for f in lambdas]
        return LambdaLR(self.optimizer, lambdas), True

    def train_task(self, loader: DataLoader) -> None:
        assert self.task is not None, "begin_task must be called first"
        self._train_loader = loader  # legacy_stats_train_transform: statistics on it
        epochs = self.config.epochs
        if self.task.index == 0:
            warmup = int(round(float(self.options.warmup_fraction) * epochs))
            if warmup > 0:
                self._train_phase(loader, warmup, dense=True)
                self._build_optimizer()
        self._train_phase(loader, epochs, dense=False)

    def _train_phase(self, loader: DataLoader, epochs: int, dense: bool) -> None:
        t, opts = self.task.index, self.options
        mask = class_mask(self.num_classes, self.task.classes, self.device)
        top_k = -1 if dense else self.top_k
        eps = float(opts.noise_eps)
        router_coef = 0.0 if dense else float(opts.router_coef)
        proto_coef = float(opts.proto_coef) if t > 0 and self.old_keys is not None else 0.0
        head_dim = self.model.head_dim
        router_scale = math.sqrt(head_dim) if opts.legacy_unscaled_router else 1.0
        old_keys = self.old_keys.to(self.device) if proto_coef > 0 else None
        flags = self.frequent.to(self.device)
        penalties = None if dense else self._penalties()
        scheduler, per_iter = self._scheduler(epochs, len(loader))
        clip = self.config.clip_grad
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        phase = "smope_warmup" if dense else "smope"
        for epoch in range(epochs):
            meter = EpochMeter("loss", "ce", "router", "proto")
            for step, x, y in self._batches(loader, f"task {t} {phase} epoch {epoch}"):
                tokens, routing = self.model.forward_features(x, top_k=top_k,
                                                              penalty_fns=penalties)
                logits = masked_logits(self.model.forward_head(tokens), mask)
                ce = F.cross_entropy(logits, y)
                loss = ce
                router = self._router_term(routing, eps, router_scale) if router_coef > 0 else None
                if router is not None:
                    loss = loss + router_coef * router
                proto = None
                if proto_coef > 0:
                    keys = self.model.experts.key
                    proto = sum(prototype_loss(old_keys[j], keys[j], flags[j], self.top_k)
                                for j in range(keys.shape[0]))
                    loss = loss + proto_coef * proto
                optimizer_step(self.optimizer, loss, phase=phase, task=t, epoch=epoch, step=step,
                               clip_grad=clip, params=params)
                if scheduler is not None and per_iter:
                    scheduler.step()
                meter.update(logits, y, loss=loss, ce=ce, router=router, proto=proto)
            if scheduler is not None and not per_iter:
                scheduler.step()
            self.log(meter.record(phase, t, epoch, lr=self.optimizer.param_groups[-1]["lr"]))

    @staticmethod
    def _router_term(routing: list[Routing], eps: float, scale: float) -> torch.Tensor:
        # ``scale`` = sqrt(D) turns the scaled proxy back into the original code's dot product.
        return sum(router_loss(r.scores * scale, r.selected, eps) for r in routing)

    # ------------------------------------------------------------------ consolidation
    def end_task(self, task: Task) -> None:
        if task.stats_loader is None:
            raise ValueError("end_task needs task.stats_loader for counts and statistics")
        if self.options.legacy_stats_train_transform:
            if self._train_loader is None:
                raise ValueError("legacy_stats_train_transform needs train_task to run first")
            # the original: expert counts over the training loader (train augmentation,
            # shuffled, drop_last), statistics over every training image with the train
            # transform in order (SMoPE learners/prompt.py l.405-421, trainer.py l.447-469)
            ordered = DataLoader(self._train_loader.dataset,
                                 batch_size=self._train_loader.batch_size, shuffle=False,
                                 num_workers=self._train_loader.num_workers)
            self._count_and_collect(task, self._train_loader, stats=False)
            self._count_and_collect(task, ordered, counts=False)
        else:
            self._count_and_collect(task, task.stats_loader)
        if task.index > 0:
            self._notify_before_alignment(task)
            self._align_head(task)

    @torch.no_grad()
    def _count_and_collect(self, task: Task, loader: DataLoader, *, counts: bool = True,
                           stats: bool = True) -> None:
        """One inference pass: expert selection counts and/or Gaussian class statistics."""
        n_experts = self.model.experts.num_experts
        before = self.counts.clone()
        for x, y in self.progress(loader, f"task {task.index} experts + statistics"):
            x, y = x.to(self.device), y.to(self.device)
            tokens, routing = self.model.forward_features(x, top_k=self.top_k)
            if counts:
                for j, route in enumerate(routing):
                    hits = F.one_hot(route.selected, n_experts).sum(dim=(0, 2))  # (H, N_p)
                    self.counts[j] += hits.cpu()
            if stats:
                self.stats.update(self.model.pre_logits(tokens), y)
        if stats:
            self.stats.all_reduce(task.classes)
        if counts and dist.is_available() and dist.is_initialized():  # per-rank shards
            self.counts -= before
            dist.all_reduce(self.counts)
            self.counts += before

    def _align_head(self, task: Task) -> None:
        """Head-only alignment on Gaussian samples of all seen classes (section 7.5 step 3)."""
        cfg, opts = self.config, self.options
        head = self.model.head
        optimizer = torch.optim.AdamW(head.parameters(), lr=opts.ca_lr,
                                      weight_decay=float(self.options.tap_weight_decay))
        total = max(opts.tap_epochs * len(task.old_classes), 1)
        factor = coswm_factor(opts.ca_lr, total, 0)
        if self.options.legacy_scheduler_quirks:  # the original's first step at 10 x ca_lr
            factor = first_at(10.0, factor)
        scheduler = LambdaLR(optimizer, factor)
        self._align_on_gaussians(
            lambda f: head(self.model.fc_norm(f)), optimizer, scheduler, stats=self.stats,
            task=task, epochs=opts.tap_epochs,
            n_per_class=cfg.batch_size * opts.tap_samples_mult,  # per class and per iteration
            phase="tap", step_per_iteration=True)

    # ------------------------------------------------------------------ inference
    def _eval_penalties(self) -> list | None:
        level = float(self.options.eval_unused_penalty)
        if level <= 0:
            return None
        unused = (self.counts == 0).to(self.device)
        return [lambda s, f=unused[j]: adaptive_noise(s, f, level) for j in range(len(unused))]

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.task_index >= 0, "no task has been learned yet"
        tokens, routing = self.model.forward_features(x.to(self.device), top_k=self.top_k,
                                                      penalty_fns=self._eval_penalties())
        n_experts = self.model.experts.num_experts
        # (layers, heads, experts): how often each expert was chosen for this batch
        self._last_selection = None if any(r.selected is None for r in routing) else torch.stack(
            [F.one_hot(r.selected, n_experts).sum(dim=(0, 2)).cpu() for r in routing])
        return self.model.forward_head(tokens)

    def expert_selection(self) -> torch.Tensor | None:
        """Expert selection counts ``(layers, heads, experts)`` of the last prediction."""
        return getattr(self, "_last_selection", None)

    # ------------------------------------------------------------------ run files
    def expert_frequency(self) -> dict[str, Any]:
        """Accumulated selection counts in the ``expert_frequency.json`` format of
        :mod:`figures.runs` (layer, head, expert)."""
        return {
            "kind": "expert_frequency",
            "version": 1,
            "layer_ids": list(self.model.prompt_layers),
            "after_task": self.task_index,
            "top_k": self.top_k,
            "layers": self.counts.tolist(),
        }

    def run_files(self) -> dict[str, Any]:
        """JSON files for the run directory (written by the engine after every task)."""
        return {"expert_frequency.json": self.expert_frequency()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "task_index": self.task_index,
            "experts": self.model.experts.state_dict(),
            "head": self.model.head.state_dict(),
            "counts": self.counts.clone(),
            "frequent": self.frequent.clone(),
            "old_keys": None if self.old_keys is None else self.old_keys.cpu().clone(),
            "stats": self.stats.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "sample_gen": self.sample_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_checkpoint(state)
        self.model.experts.load_state_dict(state["experts"])
        self.model.head.load_state_dict(state["head"])
        self.counts = state["counts"].clone()
        self.frequent = state["frequent"].clone()
        self.old_keys = None if state["old_keys"] is None else state["old_keys"].clone()
        self.stats.load_state_dict(state["stats"])
        self.sample_gen.set_state(state["sample_gen"])
        if self._restore_task(state):
            self._build_optimizer()
            if state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
