"""The ``Method`` interface shared by every continual-learning method, and its registry."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from cl.errors import ConfigError
from cl.options import RUN_FIELDS, MethodOptions
from cl.presets import PresetTable
from norga.choices import check_choice

ProgressFn = Callable[[Iterable, str], Iterable]
LogFn = Callable[[dict[str, Any]], None]


def _no_progress(iterable: Iterable, desc: str) -> Iterable:
    return iterable


def _no_log(record: dict[str, Any]) -> None:
    return None


@dataclass
class Task:
    """What a method is told about the task it is about to learn.

    Attributes
    ----------
    index:
        Task number ``t`` (0-based).
    classes:
        Original class ids of task ``t``.
    task_classes:
        Class ids of every task of the benchmark (``task_classes[t] == classes``).
    stats_loader:
        Training images of task ``t`` with the *test* transform, for class statistics.
    before_alignment:
        Called by :meth:`Method.end_task` with this task right before the head alignment (the
        engine passes one that evaluates the before-alignment accuracies); ``None``: nothing.
        Not part of the task's identity (left out of ``==``).
    """

    index: int
    classes: list[int]
    task_classes: list[list[int]]
    stats_loader: DataLoader | None = None
    before_alignment: Callable[[Task], None] | None = field(default=None, compare=False)

    @property
    def seen_classes(self) -> list[int]:
        return [c for t in self.task_classes[: self.index + 1] for c in t]

    @property
    def old_classes(self) -> list[int]:
        return [c for t in self.task_classes[: self.index] for c in t]


class Method(abc.ABC):
    """One continual-learning method.

    The engine calls, for every task: :meth:`begin_task`, :meth:`train_task`, :meth:`end_task`,
    then evaluates with :meth:`predict` (and, where available, :meth:`predict_with_tasks` and
    :meth:`predict_oracle`). :meth:`state_dict` must hold *everything* needed to continue after a
    finished task, including optimizer and random-generator states.
    """

    name: ClassVar[str] = ""
    #: this method's typed options (a dataclass derived from :class:`cl.options.MethodOptions`,
    #: held by the run as ``config.method_options``); the base has none
    options_type: ClassVar[type[MethodOptions]] = MethodOptions

    #: this method's presets (:data:`cl.presets.PresetTable`: ``"*"``, dataset or
    #: ``(dataset, backbone)`` keys -> config overrides), layered by
    #: :func:`cl.config.resolve_config` over the dataset preset. Only a class's own declaration
    #: counts: a registered subclass does not inherit its parent's presets.
    presets: ClassVar[PresetTable] = {}
    #: presets of the alternative recipes (``CLConfig.recipe`` other than ``"default"``):
    #: recipe -> table, applied after :attr:`presets`; a dataset missing from the table has no
    #: such recipe (``"*"`` only adds to the datasets listed). Own declaration only, as above.
    recipe_presets: ClassVar[dict[str, PresetTable]] = {}

    #: whether :meth:`end_task` re-trains a head on Gaussian samples ("alignment": TAP of
    #: HiDe-Prompt / NoRGa / SMoPE); the engine then also evaluates just before that step
    has_alignment: ClassVar[bool] = False

    def __init__(self, progress: ProgressFn | None = None, log: LogFn | None = None) -> None:
        self.progress: ProgressFn = progress or _no_progress
        self.log: LogFn = log or _no_log

    def _notify_before_alignment(self, task: Task) -> None:
        """Subclasses call this in :meth:`end_task` just before their head alignment: runs the
        task's :attr:`Task.before_alignment` hook, if it has one."""
        if task.before_alignment is not None:
            task.before_alignment(task)

    @classmethod
    def resolve_options(cls, given: MethodOptions | Mapping[str, Any]) -> MethodOptions:
        """``given`` as this method's validated :attr:`options_type` (a mapping: its fields,
        defaults for the others).

        Raises
        ------
        ConfigError
            (``field`` ``"method_options"``) options of another method's type or an unknown
            name (the allowed ones named); ``"method_options.NAME"`` for a bad value.
        """
        if type(given) is cls.options_type:
            return given.validate()
        if isinstance(given, MethodOptions):
            raise ConfigError("method_options", f"{type(given).__name__} are not the options of "
                              f"{cls.name} ({cls.options_type.__name__})")
        return cls.options_type.from_dict(given, cls.name)

    @abc.abstractmethod
    def begin_task(self, task: Task) -> None:
        """Prepare for ``task`` (parameters to train, optimizers)."""

    @abc.abstractmethod
    def train_task(self, loader: DataLoader) -> None:
        """Train on the task's training data."""

    @abc.abstractmethod
    def end_task(self, task: Task) -> None:
        """Consolidate after training (statistics, alignment)."""

    @abc.abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` without knowing the task."""

    def predict_with_tasks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the predicted task per sample (``None`` if the method has no TII)."""
        return self.predict(x), None

    def predict_oracle(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor | None:
        """Task-incremental logits given the true task ids (``None`` if unsupported)."""
        return None

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after a finished task."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def expert_selection(self) -> torch.Tensor | None:
        """Expert selection counts ``(layers, heads, experts)`` of the last :meth:`predict` /
        :meth:`predict_with_tasks` call (``None``: the method has no prompt experts). The
        engine sums them per evaluated task into ``task_selection.json``."""
        return None

    def run_files(self) -> dict[str, Any]:
        """Extra JSON files for the run directory, ``{file name: content}`` (default: none).

        The engine writes them atomically after every task (SMoPE: ``expert_frequency.json``).
        """
        return {}


_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a :class:`Method` under ``name``."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered")
        shadowed = sorted(set(cls.options_type.field_names()) & set(RUN_FIELDS))
        if shadowed:  # one name, one meaning: --set NAME must address one field
            raise ValueError(f"{cls.__name__}.options_type fields {', '.join(shadowed)} are "
                             "run fields of CLConfig; rename them")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


def available_methods() -> list[str]:
    """Registered method names.

    Every built-in method is registered: importing this module first runs
    ``cl/methods/__init__.py``, which imports every method module.
    """
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The class registered as ``name``; :class:`norga.choices.ChoiceError` (a ``ValueError``)
    lists the allowed names."""
    return _METHODS[check_choice("method", name, available_methods())]
