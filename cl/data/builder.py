"""The one skeleton of the real-image benchmark builders (CIFAR-100, ImageNet-R, CUB-200,
5-Datasets).

Every real builder is ``build_x(*, data_root, seed, download, **options)`` and does the same
steps, written once here in :func:`build_real_benchmark`:

1. take the builder's own options (``split`` of ImageNet-R, ``legacy_transform_leak`` of
   5-Datasets; :class:`Choice`) and validate the common ones
   (:meth:`cl.data.realdata.RealDataOptions.parse`);
2. resolve the data root and hand the module's reader a :class:`Request`;
3. the reader finds, verifies and reads the files (:func:`locate` for a dataset shipped as one
   archive) and returns what it read: a :class:`SplitData` for a dataset with one train/test
   split, or any object with the same ``benchmark(request)`` method (5-Datasets);
4. ``benchmark(request)`` builds the transforms, the class order, the tasks and the
   :class:`~cl.data.base.Benchmark`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from cl.data.base import Benchmark
from cl.data.download import Fetcher, Resource, ensure_extracted, extracted_provenance
from cl.data.realdata import (
    RealDataOptions,
    class_order,
    not_found_message,
    resolve_data_root,
    split_benchmark,
    split_into_tasks,
)
from cl.data.transforms import TransformKind, build_transforms
from norga.choices import ChoiceError, check_choice

Transform = Callable[[Image.Image], Any]


@dataclass(frozen=True)
class Fetching:
    """Where a dataset's files are and how missing ones may be fetched."""

    root: Path
    allow_download: bool
    fetch: Fetcher | None = None
    progress: bool = True


@dataclass(frozen=True)
class Request:
    """What a dataset module's reader gets: the files' location, the seed and the options."""

    how: Fetching
    seed: int
    opts: RealDataOptions
    own: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.how.root


@dataclass(frozen=True)
class Choice:
    """An option of one builder only: its default and the values allowed (by type and value)."""

    default: Any
    allowed: tuple[Any, ...]

    def take(self, name: str, options: dict[str, Any]) -> Any:
        """Pop ``name`` from ``options`` (default if absent); a bad value raises ``ValueError``
        naming it and what is allowed."""
        value = options.pop(name, self.default)
        if isinstance(self.default, bool) and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false; got {value!r}")
        if type(value) is not type(self.default):
            raise ChoiceError(name, value, self.allowed)
        return check_choice(name, value, self.allowed)


class Read(Protocol):
    """What a reader returns: it turns itself into the benchmark."""

    def benchmark(self, request: Request) -> Benchmark: ...


@dataclass
class SplitData:
    """One dataset with one train/test split, as its module read it.

    Attributes
    ----------
    name, num_classes:
        Registry name and number of classes.
    num_tasks:
        The benchmark's standard number of tasks (used when the options give none).
    kind:
        The HiDe/NoRGa transform kind of the dataset (mapped by ``RealDataOptions.kind``).
    make:
        ``make(split, transform)`` builds the dataset of ``"train"`` or ``"test"``.
    train_labels, test_labels, source, split, class_names:
        As in :func:`cl.data.realdata.split_benchmark`.
    """

    name: str
    num_classes: int
    num_tasks: int
    kind: TransformKind
    make: Callable[[str, Transform], Dataset]
    train_labels: np.ndarray
    test_labels: np.ndarray
    source: dict[str, Any]
    split: Any
    class_names: list[str]

    def benchmark(self, request: Request) -> Benchmark:
        """Transforms, class order (from the seed), tasks and the benchmark."""
        opts = request.opts
        transforms = build_transforms(opts.kind(self.kind), **opts.transform_args())
        order = class_order(self.num_classes, request.seed, opts.class_order)
        tasks = split_into_tasks(order, opts.num_tasks or self.num_tasks)
        return split_benchmark(self.name, num_classes=self.num_classes, opts=opts,
                               seed=request.seed, order=order, tasks=tasks,
                               transforms=transforms, make=self.make,
                               train_labels=self.train_labels, test_labels=self.test_labels,
                               source=self.source, split=self.split,
                               class_names=self.class_names)


def build_real_benchmark(read: Callable[[Request], Read], *, data_root: str | Path | None,
                         seed: int, download: bool, options: dict[str, Any],
                         own_options: Mapping[str, Choice] | None = None) -> Benchmark:
    """The body of every real builder: options, data root, ``read(request)``, benchmark.

    Parameters
    ----------
    read:
        The dataset module's reader (finds, verifies and reads the files).
    data_root, seed, download, options:
        The builder's arguments (``options`` is its ``**options``; it is not modified).
    own_options:
        The builder's own options, taken before the common ones are validated.

    Raises
    ------
    TypeError, ValueError
        Unknown or bad options.
    DatasetNotFoundError, ChecksumError
        From the reader.
    """
    options = dict(options)
    own = {name: choice.take(name, options) for name, choice in (own_options or {}).items()}
    opts = RealDataOptions.parse(options)
    how = Fetching(resolve_data_root(data_root), download, opts.fetch, opts.progress)
    request = Request(how=how, seed=seed, opts=opts, own=own)
    return read(request).benchmark(request)


def archive_missing_message(dataset: str, root: Path, archive: Resource,
                            layout: list[str]) -> str:
    """The not-found message of a dataset shipped as one archive: the extracted ``layout``
    (entries under ``root``), the archive as the alternative, and where to download it."""
    return not_found_message(
        dataset, root,
        [*layout, f"{archive.filename}   (or this archive; extracted on first use)"],
        [f"{archive.describe()} -> {root / archive.filename}"])


def locate(archive: Resource, folder: str, how: Fetching,
           missing_message: str) -> tuple[Path, dict[str, Any]]:
    """The extracted tree ``how.root / folder`` of a dataset shipped as one archive (extracting,
    or downloading and extracting, the verified archive if needed) and its provenance.

    Raises
    ------
    DatasetNotFoundError
        Neither the folder nor the archive is there and downloading is not allowed
        (``missing_message``), or the download failed.
    ChecksumError
        The archive does not match its checksum, or cannot be extracted.
    """
    tree, _ = ensure_extracted(archive, how.root, folder, allow_download=how.allow_download,
                               missing_message=missing_message, fetch=how.fetch,
                               progress=how.progress)
    return tree, extracted_provenance(tree, archive)
