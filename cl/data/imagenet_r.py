"""Split ImageNet-R: 200 classes, 10 tasks x 20 classes, with a fixed 80/20 train/test split.

Layout under the data root::

    <root>/imagenet-r.tar                 optional once extracted
    <root>/imagenet-r/<wnid>/<file>.jpg   30,000 images, 200 class folders

The archive (``https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar``, MD5
``a61312130a589d0ca1a8fca1f2bd3337``) is verified before it is extracted; the extracted tree is
checked on every use (200 class folders, 30,000 images).

**The train/test split.** ImageNet-R has no official split. The HiDe-Prompt / NoRGa code draws a
non-stratified 80/20 split from the torch RNG of whichever seed ran first and *moves the files*
(docs/cl-background.md#imagenet-r-split). Here the split is a pure function of the file names,
identical for every seed, every run and every user, and nothing on disk is moved or written:

    For each class ``wnid``, sort its files by ``sha256("<wnid>/<file name>")`` (hex digest of
    the UTF-8 path, ``/`` separator); the first ``floor(0.2 * n + 0.5)`` files are **test**, the
    rest are **train**.

The split is therefore stratified (20% of every class, rounded) and does not depend on the
order of directory listings. ``info["split"]["test_set_sha256"]`` fingerprints the test set (the
SHA-256 of the sorted test paths joined by newlines) so runs can prove they evaluated on the same
images. A tree already rearranged by the original code (``imagenet-r/{train,test}/<wnid>/``) is
read as well, without moving anything: only ``<wnid>/<file name>`` enters the rule, so the split
is the same. Note that it differs from both the HiDe/NoRGa and the CODA/SMoPE splits.
``split="hide"`` (``--set dataset_options.split=hide``, part of ``--protocol official`` for the
HiDe/NoRGa-family methods) gives the HiDe/NoRGa split instead (:func:`hide_split`).
``split_dir=DIR`` (``--set dataset_options.split_dir=DIR``) gives the CODA-Prompt / SMoPE split:
``DIR`` holds their ``imagenet-r_train.yaml`` and ``imagenet-r_test.yaml`` (CODA-Prompt's
``dataloaders/splits/``, provided by the user), read by :mod:`cl.data.split_files`; their class
ids are used as the labels.

Class ids are the indices of the sorted wnids (as ``ImageFolder``), and tasks take consecutive
chunks of the class order (seeded permutation by default, docs/cl-background.md#splits).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cl.data.base import Benchmark
from cl.data.builder import (
    Choice,
    Request,
    SplitData,
    archive_missing_message,
    build_real_benchmark,
    locate,
)
from cl.data.download import Resource
from cl.data.errors import ChecksumError
from cl.data.realdata import FileImageDataset
from cl.data.split_files import SplitFileError, SplitList, read_split_dir

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("fixed", "hide")
# HiDe/NoRGa: random_split right after torch.manual_seed(seed) of the first run; the scripts run
# seed 42 first (docs/cl-background.md#splits), and the files then stay where that run moved them
HIDE_SPLIT_SEED = 42
HIDE_SPLIT_RULE = (f"HiDe/NoRGa: ImageFolder order (sorted wnids, sorted files), "
                   f"torch.randperm(n) seeded {HIDE_SPLIT_SEED}, first 80% train; a tree already "
                   "split into train/ and test/ by that code is used as it is")
SPLIT_RULE = ("per class, files sorted by sha256('<wnid>/<file name>'); the first "
              "floor(0.2*n + 0.5) are test, the rest train (seed-independent)")


@dataclass(frozen=True)
class ImageNetRSpec:
    """Archive, folder name and expected size of ImageNet-R."""

    archive: Resource
    folder: str
    num_classes: int
    num_images: int
    test_fraction: float = 0.2


# URL from the ImageNet-R authors (github.com/hendrycks/imagenet-r, docs/cl-background.md#splits).
# The authors publish no checksum; this MD5 is the one several independent public loaders of the
# same archive agree on (it could not be checked against the file offline).
IMAGENET_R = ImageNetRSpec(
    archive=Resource("imagenet-r.tar",
                     ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",),
                     md5="a61312130a589d0ca1a8fca1f2bd3337"),
    folder="imagenet-r",
    num_classes=200,
    num_images=30_000,
)
SPEC = IMAGENET_R  # looked up at build time (tests point it at a fixture archive)
NUM_TASKS = 10


def _is_image(path: Path) -> bool:
    return (not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
            and path.is_file())


def list_images(tree: Path) -> dict[str, list[tuple[str, Path]]]:
    """``wnid -> [(\"<wnid>/<file>\", path), ...]`` for the original layout or the one
    rearranged by the HiDe/NoRGa code (``train/`` and ``test/`` above the class folders)."""
    top = sorted(p for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    moved = {p.name for p in top} == {"train", "test"}
    class_dirs = [c for split in top for c in split.iterdir() if c.is_dir()] if moved else top
    if moved:
        log.info("%s was rearranged into train/ and test/ by the original code; reading it "
                 "in place with the fixed split rule", tree)
    images: dict[str, list[tuple[str, Path]]] = {}
    for class_dir in class_dirs:
        entries = images.setdefault(class_dir.name, [])
        entries += [(f"{class_dir.name}/{p.name}", p) for p in class_dir.iterdir()
                    if _is_image(p)]
    for wnid, entries in images.items():
        keys = [key for key, _ in entries]
        if len(set(keys)) != len(keys):
            raise ChecksumError(f"{tree}: class {wnid} lists the same file twice (in both "
                                f"train/ and test/?)")
        entries.sort()
    return images


def _rank_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def fixed_split(images: dict[str, list[tuple[str, Path]]], test_fraction: float = 0.2,
                ) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """Apply the documented split rule; returns ``(train, test)`` sorted by key."""
    train: list[tuple[str, Path]] = []
    test: list[tuple[str, Path]] = []
    for wnid in sorted(images):
        ranked = sorted(images[wnid], key=lambda item: _rank_key(item[0]))
        n_test = int(np.floor(test_fraction * len(ranked) + 0.5))
        test += ranked[:n_test]
        train += ranked[n_test:]
    return sorted(train), sorted(test)


def hide_split(images: dict[str, list[tuple[str, Path]]], test_fraction: float = 0.2,
               seed: int = HIDE_SPLIT_SEED,
               ) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """The split of the HiDe/NoRGa code (``split="hide"``); ``(train, test)`` sorted by key.

    A tree rearranged by that code (``train/`` and ``test/`` above the class folders) holds the
    split it made: it is used as it is. Otherwise the images in ``ImageFolder`` order (sorted
    wnids, files sorted by name) are permuted by ``torch.randperm(n)`` from a generator seeded
    with ``seed`` (what ``random_split(ds, [int(0.8 n), n - int(0.8 n)])`` does right after
    ``torch.manual_seed(42)``) and the first ``int(0.8 n)`` are train. Not stratified.
    """
    entries = [item for wnid in sorted(images) for item in sorted(images[wnid])]
    where = {item[1].parent.parent.name for item in entries}
    if where <= {"train", "test"} and len(where) == 2:
        train = [e for e in entries if e[1].parent.parent.name == "train"]
        test = [e for e in entries if e[1].parent.parent.name == "test"]
        return sorted(train), sorted(test)
    import torch  # only this split needs it

    n = len(entries)
    n_train = int((1.0 - test_fraction) * n)  # MoE_PromptCL continual_datasets.py l.655
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return (sorted(entries[i] for i in perm[:n_train]),
            sorted(entries[i] for i in perm[n_train:]))


def missing_message(spec: ImageNetRSpec, root: Path) -> str:
    return archive_missing_message(
        "imagenet-r", root, spec.archive,
        [f"{spec.folder}/<wnid>/*.jpg   ({spec.num_classes} class folders, "
         f"{spec.num_images} images)"])


def build_imagenet_r(*, data_root: str | Path | None = None, seed: int = 0,
                     download: bool = False, **options: Any) -> Benchmark:
    """Split ImageNet-R (10 tasks x 20 classes by default) with the fixed split above.

    Parameters
    ----------
    data_root:
        Directory holding ``imagenet-r/`` or ``imagenet-r.tar``.
    seed:
        Seed of the class order only; the train/test split never depends on it.
    download:
        Download the archive (about 2 GB) if it is missing.
    **options:
        See :class:`cl.data.realdata.RealDataOptions`.

    Raises
    ------
    DatasetNotFoundError, ChecksumError
        Missing data, an archive that fails its MD5, or a tree with the wrong counts.
    """
    split_dir = options.pop("split_dir", None)
    if split_dir is not None and (not isinstance(split_dir, str) or not split_dir):
        raise ValueError(f"split_dir must be a directory path (holding imagenet-r_train.yaml "
                         f"and imagenet-r_test.yaml); got {split_dir!r}")
    if split_dir is not None and options.get("split", "fixed") != "fixed":
        raise ValueError(f"split_dir and split={options['split']!r} choose two different "
                         f"splits; give one of them")

    def read(request: Request) -> SplitData:
        return _read(request, None if split_dir is None else Path(split_dir).expanduser())

    return build_real_benchmark(read, data_root=data_root, seed=seed, download=download,
                                options=options, own_options={"split": Choice("fixed", SPLITS)})


def listed_split(images: dict[str, list[tuple[str, Path]]], lists: tuple[SplitList, SplitList],
                 ) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]], dict[str, int]]:
    """The split of CODA-Prompt's lists: ``(train, test, class id per wnid)``, in list order.

    Raises
    ------
    SplitFileError
        A listed image that is not in the tree.
    """
    where = {key: path for entries in images.values() for key, path in entries}
    chosen = []
    for split in lists:
        absent = [key for key in split.keys if key not in where]
        if absent:
            raise SplitFileError(f"{split.path}: {len(absent)} listed images are not in the "
                                 f"ImageNet-R tree, e.g. {absent[0]!r}; expected every "
                                 f"'<wnid>/<file>' of the list under imagenet-r/")
        chosen.append([(key, where[key]) for key in split.keys])
    class_ids = {key.split("/", 1)[0]: target for split in lists
                 for key, target in zip(split.keys, split.targets, strict=True)}
    return chosen[0], chosen[1], class_ids


def _read(request: Request, split_dir: Path | None = None) -> SplitData:
    split_kind = request.own["split"]
    spec = SPEC
    tree, provenance = locate(spec.archive, spec.folder, request.how,
                              missing_message(spec, request.root))
    images = list_images(tree)
    found = (len(images), sum(len(v) for v in images.values()))
    if found != (spec.num_classes, spec.num_images):
        raise ChecksumError(
            f"{tree} does not look like a complete ImageNet-R: expected {spec.num_classes} "
            f"class folders and {spec.num_images} images, found {found[0]} and {found[1]}. "
            f"Nothing was changed; re-extract {spec.archive.filename} into an empty data root.")
    class_ids = {wnid: index for index, wnid in enumerate(sorted(images))}
    rule = HIDE_SPLIT_RULE if split_kind == "hide" else SPLIT_RULE
    if split_dir is not None:
        lists = read_split_dir(split_dir, spec.num_classes)
        train_items, test_items, class_ids = listed_split(images, lists)
        rule = (f"CODA-Prompt/SMoPE split lists {lists[0].path} and {lists[1].path} (their "
                f"order and class ids)")
    else:
        split_fn = hide_split if split_kind == "hide" else fixed_split
        train_items, test_items = split_fn(images, spec.test_fraction)

    def labels(items: list[tuple[str, Path]]) -> np.ndarray:
        return np.array([class_ids[key.split("/", 1)[0]] for key, _ in items], dtype=np.int64)

    train_labels, test_labels = labels(train_items), labels(test_items)

    def make(split: str, transform: Any) -> FileImageDataset:
        items, targets = ((train_items, train_labels) if split == "train"
                          else (test_items, test_labels))
        return FileImageDataset([path for _, path in items], targets, transform)

    test_keys = "\n".join(key for key, _ in test_items)
    split = {"rule": rule,
             "num_train": len(train_items), "num_test": len(test_items),
             "test_set_sha256": hashlib.sha256(test_keys.encode("utf-8")).hexdigest()}
    return SplitData("imagenet-r", num_classes=spec.num_classes, num_tasks=NUM_TASKS,
                     kind="default", make=make, train_labels=train_labels,
                     test_labels=test_labels, source=provenance, split=split,
                     class_names=sorted(class_ids, key=class_ids.__getitem__))
