"""The one check of a value against a fixed set of allowed values.

Every package (:mod:`moe_theory`, :mod:`cl`, :mod:`figures`) checks options with a fixed set of
values through :func:`check_choice`, so each such error names the option, what is allowed and
the value given, in one line and one format::

    >>> check_choice("gate", "norga", ("linear", "norga"))
    'norga'
    >>> check_choice("gate", "cubic", ("linear", "norga"))
    Traceback (most recent call last):
    ...
    norga.choices.ChoiceError: gate must be one of linear, norga; got 'cubic'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class ChoiceError(ValueError):
    """A value outside its allowed set (a :class:`ValueError`).

    Attributes
    ----------
    name:
        What was checked (an option or field name).
    value:
        The value given.
    allowed:
        The allowed values, in the order they are listed.
    """

    def __init__(self, name: str, value: Any, allowed: Iterable[Any]) -> None:
        self.name = name
        self.value = value
        self.allowed = tuple(allowed)
        super().__init__(f"{name} {self.reason}")

    @property
    def reason(self) -> str:
        """The message without the leading name: ``must be one of A, B; got 'x'``."""
        return f"must be one of {', '.join(map(str, self.allowed))}; got {self.value!r}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (loky, dask)
        return type(self), (self.name, self.value, self.allowed)


def check_choice(name: str, value: Any, allowed: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``allowed``, else raise :class:`ChoiceError`.

    Parameters
    ----------
    name:
        The option's name, first word of the message.
    value:
        The value to check (compared with ``==``; a boolean never matches a number or the other
        way round, although ``1 == True``).
    allowed:
        The allowed values.

    Returns
    -------
    The value, typed as an element of ``allowed`` (a ``Literal`` when ``allowed`` is typed
    ``tuple[SomeLiteral, ...]``).
    """
    options = tuple(allowed)
    if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in options):
        raise ChoiceError(name, value, options)
    return value
