"""Split CUB-200-2011: 10 tasks x 20 classes with the official train/test list.

Layout under the data root::

    <root>/CUB_200_2011.tgz             optional once extracted
    <root>/CUB_200_2011/images.txt              "<image id> <class dir>/<file>.jpg"
    <root>/CUB_200_2011/image_class_labels.txt  "<image id> <class id 1..200>"
    <root>/CUB_200_2011/train_test_split.txt    "<image id> <1 = train, 0 = test>"
    <root>/CUB_200_2011/classes.txt             "<class id> <class dir>"
    <root>/CUB_200_2011/images/<class dir>/*.jpg

A tree already rearranged by the HiDe/NoRGa code (images moved to
``CUB_200_2011/{train,test}/<class dir>/`` by ``train_test_split.txt``, the list files kept) is
read in place; a tree with the images in neither layout is refused, naming both counts.

The official archive (CaltechDATA, MD5 ``97eceeb196236b17998738112f37df78``) is verified
before extraction. The loader reads the four text files directly (docs/cl-background.md#splits and
#cub-loaders): nothing is moved, no trailing ``/`` is needed on the path, and the label of an image
is its class id minus one. On every use the lists are cross-checked (same image ids everywhere,
11,788 images, 5,994 train / 5,794 test, each image's folder matching its class, every file
present).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cl.data.base import Benchmark
from cl.data.builder import (
    Request,
    SplitData,
    archive_missing_message,
    build_real_benchmark,
    locate,
)
from cl.data.download import Resource
from cl.data.errors import ChecksumError, DatasetNotFoundError
from cl.data.realdata import FileImageDataset

log = logging.getLogger(__name__)

ARCHIVE_LAYOUT = "the official archive"
REARRANGED_LAYOUT = "rearranged by the HiDe/NoRGa code"
LIST_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


@dataclass(frozen=True)
class CubSpec:
    """Archive, folder and expected sizes of CUB-200-2011."""

    archive: Resource
    folder: str
    num_classes: int
    num_images: int
    num_train: int
    num_test: int


# Official CaltechDATA record of CUB-200-2011 (the old www.vision.caltech.edu URL is gone); the
# MD5 is the one published with the archive and used by public loaders (e.g. Avalanche's CUB200).
CUB_200_2011 = CubSpec(
    archive=Resource("CUB_200_2011.tgz",
                     ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
                      "?download=1",),
                     md5="97eceeb196236b17998738112f37df78"),
    folder="CUB_200_2011",
    num_classes=200,
    num_images=11_788,
    num_train=5_994,
    num_test=5_794,
)
SPEC = CUB_200_2011  # looked up at build time (tests point it at a fixture archive)
NUM_TASKS = 10


@dataclass
class CubLists:
    """The parsed text files: per image (sorted by id) its path, label and split."""

    image_ids: np.ndarray
    paths: list[Path]
    labels: np.ndarray  # class id - 1
    is_train: np.ndarray
    class_names: list[str]
    layout: str = ""


def _read_pairs(path: Path) -> dict[int, str]:
    pairs: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise ChecksumError(f"{path}, line {number}: expected '<id> <value>', got {line!r}")
        if int(key) in pairs:
            raise ChecksumError(f"{path}, line {number}: id {key} appears twice")
        pairs[int(key)] = value.strip()
    return pairs


def read_lists(tree: Path) -> CubLists:
    """Parse and cross-check the CUB list files under ``tree``."""
    missing = [name for name in LIST_FILES if not (tree / name).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{tree} is incomplete: {', '.join(missing)} missing")
    images = _read_pairs(tree / "images.txt")
    labels = _read_pairs(tree / "image_class_labels.txt")
    split = _read_pairs(tree / "train_test_split.txt")
    classes = _read_pairs(tree / "classes.txt")
    if not images.keys() == labels.keys() == split.keys():
        raise ChecksumError(f"{tree}: images.txt, image_class_labels.txt and "
                            f"train_test_split.txt list different image ids")
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise ChecksumError(f"{tree}/classes.txt: class ids are not 1..{len(classes)}")
    ids = np.array(sorted(images), dtype=np.int64)
    class_of = np.array([int(labels[i]) for i in ids], dtype=np.int64)
    if not set(class_of) <= set(classes):
        raise ChecksumError(f"{tree}/image_class_labels.txt uses class ids not in classes.txt")
    flags = [split[i] for i in ids]
    if not set(flags) <= {"0", "1"}:
        raise ChecksumError(f"{tree}/train_test_split.txt: flags must be 0 or 1")
    for image_id, class_id in zip(ids, class_of, strict=True):
        folder = images[image_id].split("/", 1)[0]
        if folder != classes[class_id]:
            raise ChecksumError(f"{tree}: image {image_id} ({images[image_id]}) is labelled "
                                f"class {class_id} ({classes[class_id]})")
    is_train = np.array([f == "1" for f in flags])
    paths, layout = _image_paths(tree, [images[i] for i in ids], is_train)
    return CubLists(image_ids=ids, paths=paths, labels=class_of - 1, is_train=is_train,
                    class_names=[classes[c] for c in sorted(classes)], layout=layout)


def _image_paths(tree: Path, listed: list[str], is_train: np.ndarray) -> tuple[list[Path], str]:
    """Where the listed images are: ``images/<class dir>/<file>`` (the official archive) or
    ``{train,test}/<class dir>/<file>`` (the tree as the HiDe/NoRGa code rearranges it, by
    ``train_test_split.txt``). Anything else is refused, naming what was found and the layouts
    expected."""
    archive = [tree / "images" / p for p in listed]
    split = [tree / ("train" if flag else "test") / p for p, flag in zip(listed, is_train,
                                                                            strict=True)]
    n_archive = sum(p.is_file() for p in archive)
    if n_archive == len(listed):
        return archive, ARCHIVE_LAYOUT
    n_split = sum(p.is_file() for p in split)
    if n_split == len(listed):
        return split, REARRANGED_LAYOUT
    absent = [p for p, q in zip(archive, split, strict=True) if not p.is_file()
              and not q.is_file()]
    what = (f"{len(absent)} listed images are missing, e.g. {absent[0]}" if absent else
            "the images are split between the two layouts")
    raise ChecksumError(
        f"{tree}: {what}; found {n_archive} of the {len(listed)} listed images under images/ "
        f"and {n_split} under train/ + test/; expected all of them either under "
        f"images/<class dir>/ ({ARCHIVE_LAYOUT}) or under {{train,test}}/<class dir>/ by "
        f"train_test_split.txt ({REARRANGED_LAYOUT})")


def missing_message(spec: CubSpec, root: Path) -> str:
    return archive_missing_message(
        "cub200", root, spec.archive,
        [f"{spec.folder}/{{{','.join(LIST_FILES)}}}",
         f"{spec.folder}/images/<class dir>/*.jpg   ({spec.num_images} images)"])


def build_cub200(*, data_root: str | Path | None = None, seed: int = 0,
                 download: bool = False, **options: Any) -> Benchmark:
    """Split CUB-200-2011 (10 tasks x 20 classes by default), official train/test split.

    Parameters
    ----------
    data_root:
        Directory holding ``CUB_200_2011/`` or ``CUB_200_2011.tgz``.
    seed:
        Seed of the class order.
    download:
        Download the archive (about 1.1 GB) if it is missing.
    **options:
        See :class:`cl.data.realdata.RealDataOptions`.

    Raises
    ------
    DatasetNotFoundError, ChecksumError
        Missing data, an archive that fails its MD5, or inconsistent list files.
    """
    return build_real_benchmark(_read, data_root=data_root, seed=seed, download=download,
                                options=options)


def _read(request: Request) -> SplitData:
    spec = SPEC
    tree, provenance = locate(spec.archive, spec.folder, request.how,
                              missing_message(spec, request.root))
    lists = read_lists(tree)
    counts = (len(lists.class_names), len(lists.paths), int(lists.is_train.sum()),
              int((~lists.is_train).sum()))
    expected = (spec.num_classes, spec.num_images, spec.num_train, spec.num_test)
    if counts != expected:
        raise ChecksumError(f"{tree}: expected (classes, images, train, test) = {expected}, "
                            f"found {counts}")
    index = {"train": np.flatnonzero(lists.is_train), "test": np.flatnonzero(~lists.is_train)}

    def make(split: str, transform: Any) -> FileImageDataset:
        return FileImageDataset([lists.paths[i] for i in index[split]],
                                lists.labels[index[split]], transform)

    return SplitData("cub200", num_classes=spec.num_classes, num_tasks=NUM_TASKS, kind="default",
                     make=make, train_labels=lists.labels[index["train"]],
                     test_labels=lists.labels[index["test"]], source=provenance,
                     split="official train_test_split.txt; label = class id - 1; "
                     f"images as in {lists.layout}",
                     class_names=lists.class_names)
