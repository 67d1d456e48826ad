"""The data errors: what a CLI reports as one line with exit code 2.

A leaf module (it imports nothing from the project), so the download helpers, the dataset
modules and the registry can all raise and catch the same classes without importing each other.
They are re-exported by :mod:`cl.data.registry` and :mod:`cl.data`, where they have always been.
"""

from __future__ import annotations


class DatasetError(RuntimeError):
    """Base class of data errors that a CLI reports as one line with exit code 2."""


class DatasetNotFoundError(DatasetError):
    """The dataset is not on disk (and ``download`` was not requested or is impossible)."""


class ChecksumError(DatasetError):
    """A file on disk does not match its expected checksum."""
