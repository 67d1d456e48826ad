"""The error of a configuration that cannot run, with the config field at fault.

A module of its own that imports nothing from :mod:`cl`, so that the config resolver, the method
classes (which check their ``method_options``) and the engine can all raise it without an import
cycle.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """The configuration cannot run (found before anything is written); exit 2 in a CLI.

    ``str(error)`` is ``"<field>: <reason>"``. A command-line tool maps :attr:`field` to the
    flag that sets it and prints :attr:`reason` after it; it never parses the message.

    Attributes
    ----------
    field:
        The :class:`cl.config.CLConfig` field at fault, or ``field.KEY`` for one key of
        ``method_options`` / ``dataset_options`` (e.g. ``"method_options.schedule"``); also
        ``"stop_after_task"`` (an argument of :func:`cl.run.engine.run_experiment`).
    reason:
        What is wrong and what is allowed, without the field name.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    @property
    def top_field(self) -> str:
        """The config field itself (``"method_options"`` for ``"method_options.schedule"``)."""
        return self.field.split(".", 1)[0]

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (spawned workers, torchrun ranks)
        return type(self), (self.field, self.reason)
