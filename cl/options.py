"""The typed configuration records: :class:`CLConfig`, everything that defines a run.

:mod:`cl.config` layers the presets into it (and re-exports it); this module imports nothing
that imports the method classes, so that they can take a :class:`CLConfig` without a cycle.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from cl.errors import ConfigError
from cl.models.gating import ACTIVATIONS, Activation
from cl.run.precision import PRECISIONS, Precision
from cl.stats.gaussian import STATS_METHODS, StatsMethod
from norga.choices import ChoiceError, check_choice

# The fields with a fixed set of values. DatasetName, MethodName and BackboneTag list what the
# registries hold (cl.data.registry, cl.methods, cl.backbones.loading;
# tests/test_config_errors.py keeps them equal); a name outside them is refused with the
# registry's own message.
DatasetName = Literal["synthetic", "digits", "cifar100", "imagenet-r", "cub200", "5datasets"]
MethodName = Literal["coda-prompt", "dualprompt", "hide", "l2p", "norga", "smope", "sprompt"]
BackboneTag = Literal["vit-tiny-random", "vit-b16-random", "sup21k", "ibot21k", "ibot1k",
                      "dino1k", "mocov3-1k", "sup1k", "sup21k-augreg", "sup21k-ft1k"]
Scheduler = Literal["constant", "step", "cosine"]
AttentionImpl = Literal["fused", "reference"]
# "default": the presets (MoE_PromptCL's re-run configs); "original-port": the configs of the
# original PyTorch ports of L2P and DualPrompt (JH-LEE-KR), see cl/protocol.py
Recipe = Literal["default", "original-port"]
Protocol = Literal["default", "official"]
KeepCheckpoints = Literal["all", "last"]
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
RECIPES: tuple[Recipe, ...] = get_args(Recipe)
ATTENTION_IMPLS: tuple[AttentionImpl, ...] = get_args(AttentionImpl)
KEEP_CHECKPOINTS: tuple[KeepCheckpoints, ...] = get_args(KeepCheckpoints)


@dataclass
class CLConfig:
    """Everything that defines a run (saved as ``config.json``)."""

    # what
    dataset: DatasetName = "synthetic"
    method: MethodName = "norga"
    backbone: BackboneTag = "vit-tiny-random"
    weights: str | None = None
    seed: int = 42
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # method-specific hyperparameters (baselines keep theirs here, keyed by name)
    method_options: dict[str, Any] = field(default_factory=dict)
    # where / how
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps (checked by cl.run.engine.resolve_device)
    batch_size: int = 128
    eval_batch_size: int = 128
    num_workers: int = 0
    # fp32: exact (default, reproduces the published setup); bf16: autocast of the ViT forward
    # passes only (heads, losses, statistics stay float32/float64), see cl/run/precision.py
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile of the models' ViT forward passes
    data_root: str | None = None
    download: bool = False
    quick: bool = False
    # prompted model
    prompt_length: int = 5
    prompt_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    gate_act: Activation = "tanh"
    attention: AttentionImpl = "fused"
    gate_trainable_after_first_task: bool = False
    legacy_kv_reshape: bool = False
    batchwise_prompt: bool = False
    # "official": switch every listed deviation to the official code's behaviour
    # (cl/protocol.py, README "Deviations from the official code")
    protocol: Protocol = "default"
    # which recipe the method presets follow (RECIPES; "original-port": L2P / DualPrompt as
    # configured by the original PyTorch ports, cl/protocol.py)
    recipe: Recipe = "default"
    # the official code's batch-vote tie order (torch.topk over padded counts), cl/protocol.py
    legacy_vote_ties: bool = False
    # drop the last partial training batch (CODA-Prompt and SMoPE code), cl/protocol.py
    legacy_drop_last: bool = False
    # within-task prompt training (WTP)
    epochs: int = 20
    lr: float = 0.03
    larger_prompt_lr: bool = True
    scheduler: Scheduler = "step"
    clip_grad: float = 1.0
    prompt_momentum: float = 0.1
    reg: float = 0.1
    contrastive_temperature: float = 0.8
    # task-identity model (TII)
    tii_epochs: int = 20
    tii_lr: float = 5e-4
    tii_scheduler: Scheduler = "constant"
    tii_mlp: list[int] = field(default_factory=lambda: [2])
    tii_ca_epochs: int = 30
    tii_ca_lr: float = 0.005
    # gradient-norm clipping of every TII optimiser step (official: clip_grad = 1.0 in every
    # config; the TII run never receives the 5-Datasets WTP value 2.0); 0 turns it off
    tii_clip_grad: float = 1.0
    # task-adaptive prediction (TAP) head alignment
    tap_epochs: int = 30
    ca_lr: float = 0.005
    tap_samples_mult: int = 5
    stats_method: StatsMethod = "covariance"
    # k-means clusters per class for stats_method="multi-centroid" (HiDe-Prompt: 10)
    n_centroids: int = 10
    # bookkeeping
    keep_checkpoints: KeepCheckpoints = "all"

    def validate(self) -> CLConfig:
        """Check the fields with a fixed set of values and the ranges.

        Raises
        ------
        ConfigError
            Naming the field at fault (``field``) and what is allowed.
        """
        choices: dict[str, tuple[str, ...]] = {
            "gate_act": ACTIVATIONS,
            "attention": ATTENTION_IMPLS,
            "scheduler": SCHEDULERS,
            "tii_scheduler": SCHEDULERS,
            "stats_method": STATS_METHODS,
            "keep_checkpoints": KEEP_CHECKPOINTS,
            "precision": PRECISIONS,
            "protocol": PROTOCOLS,
            "recipe": RECIPES,
        }
        for name, allowed in choices.items():
            _check_field_choice(name, getattr(self, name), allowed)
        if not isinstance(self.compile, bool):
            raise ConfigError("compile", f"expected true/false, got {self.compile!r}")
        positive = ("batch_size", "eval_batch_size", "prompt_length", "tap_samples_mult",
                    "n_centroids")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        for name in ("epochs", "tii_epochs", "tii_ca_epochs", "tap_epochs", "num_workers",
                     "clip_grad", "tii_clip_grad"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) \
                or not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"must be an integer in [0, 2^63), got {self.seed!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"must be a finite number, got {value}")
        for name in ("clip_grad", "reg"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if not self.tii_mlp or not _int_list(self.tii_mlp, minimum=1):
            raise ConfigError("tii_mlp", f"must be a non-empty list of positive integers (hidden "
                              f"layer widths), got {self.tii_mlp!r}")
        if not _int_list(self.prompt_layers, minimum=0) \
                or len(set(self.prompt_layers)) != len(self.prompt_layers):
            raise ConfigError("prompt_layers", f"must be distinct block indices >= 0, got "
                              f"{self.prompt_layers!r}")
        for name in ("dataset_options", "method_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, f"must be a JSON object, got {getattr(self, name)!r}")
        if not 0.0 <= self.prompt_momentum < 1.0:
            raise ConfigError("prompt_momentum",
                              f"must be in [0, 1), got {self.prompt_momentum}")
        for name in ("lr", "tii_lr", "tii_ca_lr", "ca_lr", "contrastive_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        self._validate_method_options()
        return self

    def _validate_method_options(self) -> None:
        """``method_options`` against the registered method's names, defaults and value checks
        (``Method.resolve_options``), so that a bad option is refused before anything is
        written. An unregistered ``method`` is left to the engine."""
        from cl.methods import base  # lazy: every method module imports this one

        if self.method not in base.available_methods():
            return
        try:
            base.get_method(self.method).resolve_options(self.method_options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a method that does not raise ConfigError
            raise ConfigError("method_options", str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)



def _check_field_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """:func:`norga.choices.check_choice` of config field ``name``, as a :class:`ConfigError`."""
    try:
        check_choice(name, value, allowed)
    except ChoiceError as exc:
        raise ConfigError(name, exc.reason) from None


def _int_list(value: Any, minimum: int) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
