"""Split CIFAR-100: 10 tasks x 10 classes from the official python pickle archive.

Layout under the data root (the same as torchvision's, so an existing copy is reused)::

    <root>/cifar-100-python.tar.gz          optional once extracted
    <root>/cifar-100-python/{train,test,meta}

The archive (``https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz``, MD5
``eb9058c3a382ffc7106e4002c42a8d85``) is verified before extraction, and the three pickles are
verified against their own MD5s before they are unpickled on every use, so no unverified pickle
is ever loaded; and even a verified one is unpickled with an allow-list (numpy arrays and plain
data only, :data:`PICKLE_GLOBALS`), so nothing in a file can run code. ``data`` is a
``(N, 3072)`` uint8 array in channel-major order, ``fine_labels`` the class ids; ``meta`` holds
``fine_label_names``.

Why not ``torchvision.datasets.CIFAR100``: it unpickles the same files with a plain
``pickle.load`` (after its own MD5 check), which runs whatever a pickle names; its checksums are
class constants (fixtures and :data:`SPEC` would need a subclass) and it hashes every file again
at each instantiation. This reader is the safer one and shares the verified download step with
the other datasets (:mod:`cl.data.download`).

Labels are the original fine class ids 0..99; tasks take consecutive chunks of the class order
(seeded permutation by default, docs/cl-background.md#splits). 50,000 train / 10,000 test
images, 5,000 / 1,000 per task.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cl.data.base import Benchmark
from cl.data.builder import (
    Fetching,
    Request,
    SplitData,
    archive_missing_message,
    build_real_benchmark,
    locate,
)
from cl.data.download import Resource, verify_file
from cl.data.errors import ChecksumError, DatasetNotFoundError
from cl.data.realdata import ArrayImageDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarSpec:
    """Files, checksums and sizes of a CIFAR python archive (CIFAR-10 or CIFAR-100)."""

    name: str
    archive: Resource
    folder: str
    train_files: tuple[tuple[str, str | None], ...]  # (file name, md5)
    test_files: tuple[tuple[str, str | None], ...]
    meta_file: tuple[str, str | None]
    label_key: str
    names_key: str
    num_classes: int
    num_train: int
    num_test: int


# Official URL and MD5s: https://www.cs.toronto.edu/~kriz/cifar.html, the same constants as
# torchvision.datasets.CIFAR100 (archive md5; per-file md5s of train/test/meta).
CIFAR100 = CifarSpec(
    name="CIFAR-100",
    archive=Resource("cifar-100-python.tar.gz",
                     ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                     md5="eb9058c3a382ffc7106e4002c42a8d85"),
    folder="cifar-100-python",
    train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    num_train=50_000,
    num_test=10_000,
)
# Looked up at build time (tests point it at a fixture archive).
SPEC = CIFAR100
NUM_TASKS = 10


@dataclass
class CifarArrays:
    """A CIFAR dataset in memory: ``(N, 32, 32, 3)`` uint8 images and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    provenance: dict[str, Any]


# The only globals a CIFAR python pickle names: a numpy array is rebuilt from these (the official
# files, written by Python 2 with numpy 1, spell the module numpy.core.multiarray; numpy 2 writes
# numpy._core.multiarray; Python 3 pickles bytes at protocol 2 through _codecs.encode).
PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _ArrayUnpickler(pickle.Unpickler):
    """Reads plain data and numpy arrays only: any other global (a function or class through
    which a pickle could run code) is refused before it is even imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch "
                                         "never does (only numpy arrays and plain data are read)")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[str, Any]:
    # The files were written by Python 2; latin1 restores both str keys and numpy arrays.
    with path.open("rb") as stream:
        try:
            raw = _ArrayUnpickler(stream, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise ChecksumError(f"cannot read {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ChecksumError(f"cannot read {path}: not a CIFAR batch (a {type(raw).__name__})")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in raw.items()}


def _read_batches(folder: Path, files: tuple[tuple[str, str | None], ...],
                  label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name, _ in files:
        batch = _read_pickle(folder / name)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    data = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))  # to HWC
    return data, np.concatenate(labels)


def missing_message(spec: CifarSpec, root: Path) -> str:
    names = ",".join(name for name, _ in spec.train_files + spec.test_files + (spec.meta_file,))
    return archive_missing_message(spec.name, root, spec.archive,
                                   [f"{spec.folder}/{{{names}}}"])


def load_cifar(spec: CifarSpec, how: Fetching) -> CifarArrays:
    """Find (or download and extract), verify and read a CIFAR python archive under
    ``how.root``.

    Raises
    ------
    DatasetNotFoundError
        Neither the folder nor the archive is there and downloading is not allowed.
    ChecksumError
        The archive or one of the pickles does not match its MD5, or the counts are wrong.
    """
    root = how.root
    folder, provenance = locate(spec.archive, spec.folder, how, missing_message(spec, root))
    files = spec.train_files + spec.test_files + (spec.meta_file,)
    file_sums = {}
    for name, md5 in files:
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(
                f"{folder} is incomplete: {name} is missing.\n" + missing_message(spec, root))
        # verified before unpickling: only the official bytes are ever unpickled
        file_sums[name] = verify_file(path, Resource(name, spec.archive.urls, md5=md5))["md5"]
    train_images, train_labels = _read_batches(folder, spec.train_files, spec.label_key)
    test_images, test_labels = _read_batches(folder, spec.test_files, spec.label_key)
    names = [str(n) for n in _read_pickle(folder / spec.meta_file[0])[spec.names_key]]
    counts = (len(train_labels), len(test_labels), len(names))
    if counts != (spec.num_train, spec.num_test, spec.num_classes):
        raise ChecksumError(f"{folder}: expected {spec.num_train} train / {spec.num_test} test "
                            f"images and {spec.num_classes} classes, found {counts}")
    bad = set(np.unique(np.concatenate([train_labels, test_labels]))) - set(
        range(spec.num_classes))
    if bad:
        raise ChecksumError(f"{folder}: labels outside 0..{spec.num_classes - 1}: {sorted(bad)}")
    provenance = {**provenance, "file_md5": file_sums}
    if not provenance["archive_verified"]:  # no marker: not extracted by norga
        log.info("%s: using a folder not extracted by norga; pickles verified by md5", folder)
    return CifarArrays(train_images, train_labels, test_images, test_labels, names, provenance)


def build_cifar100(*, data_root: str | Path | None = None, seed: int = 0,
                   download: bool = False, **options: Any) -> Benchmark:
    """Split CIFAR-100 (10 tasks x 10 classes by default).

    Parameters
    ----------
    data_root:
        Directory holding ``cifar-100-python/`` or the archive (default ``$NORGA_DATA`` or
        ``./data``).
    seed:
        Seed of the class order (``class_order="seeded"``).
    download:
        Download the archive if it is missing.
    **options:
        See :class:`cl.data.realdata.RealDataOptions`.

    Raises
    ------
    DatasetNotFoundError, ChecksumError
        Missing data (message with URL and layout) or files that fail verification.
    """
    return build_real_benchmark(_read, data_root=data_root, seed=seed, download=download,
                                options=options)


def _read(request: Request) -> SplitData:
    spec = SPEC
    data = load_cifar(spec, request.how)

    def make(split: str, transform: Any) -> ArrayImageDataset:
        if split == "train":
            return ArrayImageDataset(data.train_images, data.train_labels, transform)
        return ArrayImageDataset(data.test_images, data.test_labels, transform)

    return SplitData("cifar100", num_classes=spec.num_classes, num_tasks=NUM_TASKS, kind="cifar",
                     make=make, train_labels=data.train_labels, test_labels=data.test_labels,
                     source=data.provenance, split="official train/test files",
                     class_names=data.class_names)
