"""5-Datasets: CIFAR-10, MNIST, Fashion-MNIST, notMNIST and SVHN as 5 tasks x 10 classes.

Each dataset is one task. The datasets come in the order ``SVHN, MNIST, CIFAR10, NotMNIST,
FashionMNIST``, shuffled with ``random.seed(seed); random.shuffle(...)`` as in the NoRGa code
(seed 42 gives ``NotMNIST, MNIST, CIFAR10, FashionMNIST, SVHN``; docs/cl-background.md#splits), and
the labels of the dataset at position ``t`` are offset by ``10 * t`` (50 classes in all). Train
and test sets are each dataset's own. Grayscale images (MNIST, Fashion-MNIST, notMNIST) are
converted to 3 channels.

**Transforms.** Every dataset gets its *own* transform objects: CIFAR-10 the CIFAR family
(CIFAR-100 normalisation, colour jitter), the four others the default family (no
normalisation). The original code overwrote a shared transform variable when it reached CIFAR-10,
so every dataset after it silently used the CIFAR transform
(docs/cl-background.md#five-datasets-transforms); that cannot happen here and a test checks it. The
option ``legacy_transform_leak=True`` (``--set dataset_options.legacy_transform_leak=true``, part of
``--protocol official``) reproduces the leak for comparison.

Layout under the data root (torchvision-compatible names, so existing copies are reused)::

    <root>/cifar-10-python.tar.gz           optional once extracted
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/SVHN/{train,test}_32x32.mat

Trees of the official code and torchvision are read in place too: SVHN's ``.mat`` files directly
under the root (``torchvision.datasets.SVHN``), MNIST under ``<root>/MNIST_RGB/raw`` (the
official ``MNIST_RGB`` class), and the IDX files uncompressed (torchvision extracts them next to
the ``.gz``; no checksum is published for those, so the IDX structure is checked instead). A tree
holding only some of the files is refused with a message naming what was found and the layout
expected; old torchvision ``processed/*.pt`` pickles are never read.
    <root>/notMNIST.zip                     optional once extracted
    <root>/notMNIST/{Train,Test}/{A..J}/*.png

Checksums: CIFAR-10, MNIST, Fashion-MNIST and SVHN files have published MD5s (those of
torchvision) and are verified before use. notMNIST (the copy in facebookresearch's
Adversarial-Continual-Learning repository, as in the NoRGa code) has no published checksum: its
SHA-256 is recorded in ``Benchmark.info`` and the extracted tree gets a structural check (ten
non-empty letter folders in ``Train`` and ``Test``). Unreadable notMNIST images (the set has a
few) are skipped, logged and listed in ``info``, as the original code skips them.

Readers (and why not torchvision's dataset classes): CIFAR-10 goes through the CIFAR-100 reader
(:mod:`cl.data.cifar100`: pickles verified, then unpickled with an allow-list; torchvision's
``CIFAR10`` uses a plain ``pickle.load``). SVHN is read with ``scipy.io.loadmat``, which is all
``torchvision.datasets.SVHN`` does (plus the transpose and ``10 -> 0``); its class wants the
``.mat`` files directly in its root and checks its built-in MD5s again. The IDX files are read
by :func:`read_idx`: torchvision's ``read_image_file``/``read_label_file`` open only
uncompressed files and check the header with ``assert`` (dropped under ``python -O``; the label
reader checks no size at all), where :func:`read_idx` reads the ``.gz`` in place and names a bad
file in a :class:`~cl.data.errors.ChecksumError`. All downloads go through the verified step of
:mod:`cl.data.download` (official URLs and mirrors, MD5s, resumable, one-line errors).
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset

from cl.data.base import Benchmark, SplitDataset
from cl.data.builder import (
    Choice,
    Fetching,
    Request,
    archive_missing_message,
    build_real_benchmark,
)
from cl.data.cifar100 import CifarSpec, load_cifar
from cl.data.cifar100 import missing_message as cifar_missing_message
from cl.data.download import Resource, ensure_extracted, ensure_file, read_marker, verify_file
from cl.data.errors import ChecksumError, DatasetNotFoundError
from cl.data.realdata import ArrayImageDataset, class_order, not_found_message
from cl.data.splits import ClassOrder
from cl.data.transforms import TransformKind, TransformPair, build_transforms

log = logging.getLogger(__name__)

DATASET_NAMES = ("SVHN", "MNIST", "CIFAR10", "NotMNIST", "FashionMNIST")
CLASSES_PER_DATASET = 10


@dataclass(frozen=True)
class IdxSpec:
    """An MNIST-style dataset: four gzipped IDX files in ``folder``."""

    name: str
    folder: str
    train_images: Resource
    train_labels: Resource
    test_images: Resource
    test_labels: Resource
    num_train: int
    num_test: int
    # other trees holding the same files (relative to the root), reused in place
    alt_folders: tuple[str, ...] = ()

    @property
    def resources(self) -> tuple[Resource, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


@dataclass(frozen=True)
class SvhnSpec:
    """SVHN cropped digits: ``train_32x32.mat`` and ``test_32x32.mat`` in ``folder``."""

    folder: str
    train: Resource
    test: Resource
    num_train: int
    num_test: int
    alt_folders: tuple[str, ...] = ()  # "" = the data root itself
    name: str = "SVHN"

    @property
    def resources(self) -> tuple[Resource, ...]:
        return (self.train, self.test)


@dataclass(frozen=True)
class NotMnistSpec:
    """notMNIST as a zip of ``{Train,Test}/{A..J}/*.png``, extracted to ``folder``."""

    archive: Resource
    folder: str
    letters: str = "ABCDEFGHIJ"


# CIFAR-10: https://www.cs.toronto.edu/~kriz/cifar.html; MD5s as in torchvision.datasets.CIFAR10.
CIFAR10 = CifarSpec(
    name="CIFAR-10",
    archive=Resource("cifar-10-python.tar.gz",
                     ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                     md5="c58f30108f718f92721af3b95e74349a"),
    folder="cifar-10-batches-py",
    train_files=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                 ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                 ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                 ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                 ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
    test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    num_train=50_000,
    num_test=10_000,
)


def _idx_resources(bases: tuple[str, ...], md5s: dict[str, str]) -> dict[str, Resource]:
    return {name: Resource(name, tuple(base + name for base in bases), md5=md5)
            for name, md5 in md5s.items()}


# MNIST mirrors and MD5s as in torchvision.datasets.MNIST (the LeCun site is often unreachable).
_MNIST = _idx_resources(
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
     "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
     "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"})
# Fashion-MNIST: the official bucket (as torchvision) and the authors' GitHub copy.
_FASHION = _idx_resources(
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
     "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"})


def _idx_spec(name: str, folder: str, files: dict[str, Resource]) -> IdxSpec:
    return IdxSpec(name=name, folder=folder,
                   train_images=files["train-images-idx3-ubyte.gz"],
                   train_labels=files["train-labels-idx1-ubyte.gz"],
                   test_images=files["t10k-images-idx3-ubyte.gz"],
                   test_labels=files["t10k-labels-idx1-ubyte.gz"],
                   num_train=60_000, num_test=10_000)


# The official code's MNIST_RGB(torchvision.datasets.MNIST) keeps its files in
# <root>/MNIST_RGB/raw (torchvision: <root>/<class name>/raw); that tree is reused in place.
MNIST = dataclasses.replace(_idx_spec("MNIST", "MNIST/raw", _MNIST),
                            alt_folders=("MNIST_RGB/raw",))
FASHION_MNIST = _idx_spec("FashionMNIST", "FashionMNIST/raw", _FASHION)
# SVHN: http://ufldl.stanford.edu/housenumbers/; MD5s as in torchvision.datasets.SVHN.
SVHN = SvhnSpec(
    folder="SVHN",
    train=Resource("train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                   md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
    test=Resource("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                  md5="eb5a983be6a315427106f1b164d9cef3"),
    num_train=73_257,
    num_test=26_032,
    # torchvision.datasets.SVHN (and so the official code) reads <root>/{train,test}_32x32.mat
    alt_folders=("",),
)
# notMNIST: the URL used by the NoRGa code (docs/cl-background.md#splits); no checksum is published
# for it.
NOT_MNIST = NotMnistSpec(
    archive=Resource("notMNIST.zip",
                     ("https://github.com/facebookresearch/Adversarial-Continual-Learning/raw/"
                      "main/data/notMNIST.zip",)),
    folder="notMNIST",
)
# Looked up at build time (tests replace it with fixture specs).
SOURCES: dict[str, Any] = {"SVHN": SVHN, "MNIST": MNIST, "CIFAR10": CIFAR10,
                           "NotMNIST": NOT_MNIST, "FashionMNIST": FASHION_MNIST}


@dataclass
class SourceData:
    """One of the five datasets in memory, labels 0..9."""

    name: str
    kind: TransformKind
    train_images: Any
    train_labels: np.ndarray
    test_images: Any
    test_labels: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- readers


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST format), gzipped (``.gz``) or not (the
    uncompressed copy torchvision extracts next to it)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                data = stream.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise ChecksumError(f"cannot read {path}: {err}") from err
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ChecksumError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ChecksumError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ChecksumError(f"{path}: header says {dims} but holds {array.size} values")
    return array.reshape(dims)


def _present(folder: Path, resource: Resource) -> Path | None:
    """``folder / resource.filename``, else its uncompressed twin (``x.gz`` -> ``x``)."""
    path = folder / resource.filename
    if path.is_file():
        return path
    plain = folder / resource.filename.removesuffix(".gz")
    return plain if plain != path and plain.is_file() else None


def _tree_folder(spec: IdxSpec | SvhnSpec, root: Path, allow_download: bool) -> Path:
    """The folder holding ``spec``'s files: the project's layout or an official one
    (``alt_folders``), whichever is complete.

    With no file anywhere, the project's folder (where a download goes). A tree that holds only
    some of the files is refused (:class:`DatasetNotFoundError` naming what was found and what
    is expected), except the project's own folder when downloading may complete it.
    """
    partial: list[str] = []
    for rel in (spec.folder, *spec.alt_folders):
        folder = root / rel if rel else root
        found = [r.filename for r in spec.resources if _present(folder, r) is not None]
        if len(found) == len(spec.resources):
            return folder
        if found:
            if rel == spec.folder and allow_download:
                return folder
            partial.append(f"{folder}/ with only {', '.join(found)}")
    pickles = [str(root / rel).removesuffix("/raw") + "/processed/*.pt"
               for rel in (spec.folder, *spec.alt_folders) if rel.endswith("/raw")
               and any((root / rel).parent.joinpath("processed").glob("*.pt"))]
    if partial or pickles:
        found_text = "; ".join(partial + [f"{p} (old torchvision pickles: never unpickled, "
                                          "not read)" for p in pickles])
        expected = " or ".join(f"{root / rel if rel else root}/" for rel in
                               (spec.folder, *spec.alt_folders))
        names = ", ".join(r.filename for r in spec.resources)
        raise DatasetNotFoundError(
            f"{spec.name}: found {found_text}; expected all of {names} (or the files without "
            f".gz) together in {expected}")
    return root / spec.folder


def _load_idx(spec: IdxSpec, how: Fetching) -> SourceData:
    folder = _tree_folder(spec, how.root, how.allow_download)
    resources = spec.resources
    message = _missing_message(spec, how.root)
    arrays, sums, unverified = [], {}, []
    for resource in resources:
        plain = _present(folder, resource)
        if plain is not None and plain.name != resource.filename:
            # torchvision's uncompressed copy: no checksum is published for it; the IDX header,
            # sizes and label range are checked below
            arrays.append(read_idx(plain))
            sums[plain.name] = None
            unverified.append(plain.name)
            continue
        path, digests = ensure_file(resource, folder, allow_download=how.allow_download,
                                    missing_message=message, fetch=how.fetch,
                                    progress=how.progress)
        arrays.append(read_idx(path))
        sums[resource.filename] = digests["md5"]
    train_x, train_y, test_x, test_y = arrays
    if (len(train_x), len(train_y), len(test_x), len(test_y)) != (
            spec.num_train, spec.num_train, spec.num_test, spec.num_test):
        raise ChecksumError(f"{folder}: expected {spec.num_train} train / {spec.num_test} test "
                            f"images and labels")
    return SourceData(spec.name, "default", train_x, train_y.astype(np.int64), test_x,
                      test_y.astype(np.int64),
                      {"folder": str(folder.resolve()), "files": [r.provenance() for r in
                                                                  resources], "md5": sums,
                       "uncompressed_unverified": unverified})


def _load_svhn(spec: SvhnSpec, how: Fetching) -> SourceData:
    from scipy.io import loadmat  # scipy is a dependency; imported only when SVHN is used

    folder = _tree_folder(spec, how.root, how.allow_download)
    message = _missing_message(spec, how.root)
    splits, sums = [], {}
    for resource, expected in ((spec.train, spec.num_train), (spec.test, spec.num_test)):
        path, digests = ensure_file(resource, folder, allow_download=how.allow_download,
                                    missing_message=message, fetch=how.fetch,
                                    progress=how.progress)
        sums[resource.filename] = digests["md5"]
        try:
            mat = loadmat(path)
        except (ValueError, OSError) as err:
            raise ChecksumError(f"cannot read {path}: {err}") from err
        images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)))  # (N, 32, 32, 3)
        labels = np.asarray(mat["y"], dtype=np.int64).ravel()
        labels[labels == 10] = 0  # SVHN stores digit 0 as class 10
        if images.shape[1:] != (32, 32, 3) or len(images) != len(labels) or \
                len(labels) != expected:
            raise ChecksumError(f"{path}: expected {expected} images of 32x32x3, found "
                                f"X{tuple(mat['X'].shape)} and {len(labels)} labels")
        splits.append((images.astype(np.uint8), labels))
    (train_x, train_y), (test_x, test_y) = splits
    return SourceData("SVHN", "default", train_x, train_y, test_x, test_y,
                      {"folder": str(folder.resolve()),
                       "files": [spec.train.provenance(), spec.test.provenance()], "md5": sums})


def _read_letters(split_dir: Path, letters: str) -> tuple[list[np.ndarray], list[int],
                                                          list[str]]:
    images, labels, skipped = [], [], []
    for label, letter in enumerate(letters):
        letter_dir = split_dir / letter
        files = sorted(p for p in letter_dir.glob("*.png")) if letter_dir.is_dir() else []
        if not files:
            raise ChecksumError(f"{letter_dir} is missing or has no .png images")
        for path in files:
            try:
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("L")))
                labels.append(label)
            except (OSError, ValueError, SyntaxError):  # unreadable glyphs exist in notMNIST
                skipped.append(f"{split_dir.name}/{letter}/{path.name}")
    return images, labels, skipped


def _split_root(tree: Path) -> Path:
    """The folder holding ``Train/`` and ``Test/``: ``tree`` itself or one level below (the
    zip's inner folder name is not published, so both are accepted)."""
    for candidate in [tree, *sorted(p for p in tree.iterdir() if p.is_dir())]:
        if (candidate / "Train").is_dir() and (candidate / "Test").is_dir():
            return candidate
    raise ChecksumError(f"{tree} has no Train/ and Test/ folders")


def _stack(images: list[np.ndarray]) -> Any:
    shapes = {image.shape for image in images}
    return np.stack(images) if len(shapes) == 1 else images


def _notmnist_missing(spec: NotMnistSpec, root: Path) -> str:
    return archive_missing_message(
        "notMNIST", root, spec.archive,
        [f"{spec.folder}/{{Train,Test}}/{{{','.join(spec.letters)}}}/*.png"])


def _load_notmnist(spec: NotMnistSpec, how: Fetching) -> SourceData:
    tree, archive_digests = ensure_extracted(
        spec.archive, how.root, spec.folder, allow_download=how.allow_download,
        missing_message=_notmnist_missing(spec, how.root), fetch=how.fetch,
        progress=how.progress, wrap=True)
    archive = how.root / spec.archive.filename
    if archive_digests is None and archive.exists() and spec.archive.has_checksum:
        verify_file(archive, spec.archive)  # the folder was there already: check the archive
    base = _split_root(tree)
    train_x, train_y, skipped_train = _read_letters(base / "Train", spec.letters)
    test_x, test_y, skipped_test = _read_letters(base / "Test", spec.letters)
    skipped = skipped_train + skipped_test
    if skipped:
        log.warning("notMNIST: skipped %d unreadable images: %s", len(skipped),
                    ", ".join(skipped))
    marker = read_marker(tree) or {}
    return SourceData("NotMNIST", "default", _stack(train_x), np.array(train_y, np.int64),
                      _stack(test_x), np.array(test_y, np.int64),
                      {"folder": str(tree.resolve()), "archive": spec.archive.provenance(),
                       "archive_sha256": marker.get("sha256"),
                       "checksum_published": spec.archive.has_checksum,
                       "skipped_unreadable": skipped})


def _load_cifar10(spec: CifarSpec, how: Fetching) -> SourceData:
    data = load_cifar(spec, how)
    return SourceData("CIFAR10", "cifar", data.train_images, data.train_labels,
                      data.test_images, data.test_labels, data.provenance)


def _required(spec: Any, root: Path) -> list[tuple[Path, ...]]:
    """Alternatives (any one suffices) for each thing ``spec`` needs under ``root``
    (CIFAR-10, notMNIST; the MNIST-likes and SVHN go through :func:`_tree_folder`)."""
    return [(root / spec.folder, root / spec.archive.filename)]


def _is_missing(spec: Any, root: Path) -> bool:
    if isinstance(spec, IdxSpec | SvhnSpec):  # a partial tree raises its own message here
        folder = _tree_folder(spec, root, allow_download=False)
        return any(_present(folder, r) is None for r in spec.resources)
    return any(not any(p.exists() for p in options) for options in _required(spec, root))


def _missing_message(spec: Any, root: Path) -> str:
    if isinstance(spec, CifarSpec):
        return cifar_missing_message(spec, root)
    if isinstance(spec, NotMnistSpec):
        return _notmnist_missing(spec, root)
    resources = spec.resources
    folder = root / spec.folder
    layout = [f"{spec.folder}/{r.filename}" for r in resources]
    layout += [f"{rel + '/' if rel else ''}{r.filename}   (the official code's / "
               "torchvision's tree, read in place)" for rel in spec.alt_folders
               for r in resources[:1]]
    return not_found_message(
        spec.name, root, layout, [f"{r.describe()} -> {folder / r.filename}" for r in resources])


def load_source(name: str, spec: Any, how: Fetching) -> SourceData:
    """Load one of the five datasets by name (``DATASET_NAMES``)."""
    loaders = {"SVHN": _load_svhn, "MNIST": _load_idx, "FashionMNIST": _load_idx,
               "CIFAR10": _load_cifar10, "NotMNIST": _load_notmnist}
    data = loaders[name](spec, how)
    for split, labels in (("train", data.train_labels), ("test", data.test_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= CLASSES_PER_DATASET):
            raise ChecksumError(f"{name} {split} labels are outside 0..9")
    return data


# ----------------------------------------------------------------------------- builder


def dataset_order(seed: int, order: ClassOrder = "seeded") -> list[str]:
    """The task order of the five datasets (NoRGa: ``random.seed(seed); random.shuffle``)."""
    return [DATASET_NAMES[i] for i in class_order(len(DATASET_NAMES), seed, order)]


def _concat(parts: list[ArrayImageDataset]) -> SplitDataset:
    return SplitDataset(ConcatDataset(parts), np.concatenate([p.labels for p in parts]))


def build_five_datasets(*, data_root: str | Path | None = None, seed: int = 0,
                        download: bool = False, **options: Any) -> Benchmark:
    """5-Datasets (5 tasks x 10 classes, 50 classes in all).

    Parameters
    ----------
    data_root:
        Directory holding the five datasets in the layout of the module docstring.
    seed:
        Seed of the dataset order (``class_order="seeded"``; ``"standard"`` keeps
        ``SVHN, MNIST, CIFAR10, NotMNIST, FashionMNIST``).
    download:
        Download missing files.
    **options:
        See :class:`cl.data.realdata.RealDataOptions` (``num_tasks`` must be 5 if given).

    Raises
    ------
    DatasetNotFoundError
        One or more datasets are missing; the message covers all of them.
    ChecksumError
        A file fails verification.
    """
    return build_real_benchmark(
        _read, data_root=data_root, seed=seed, download=download, options=options,
        own_options={"legacy_transform_leak": Choice(False, (False, True))})


@dataclass
class FiveSources:
    """The five datasets as read, in task order; :meth:`benchmark` assembles them."""

    order: list[str]
    sources: dict[str, SourceData]
    leak: bool

    def benchmark(self, request: Request) -> Benchmark:
        """One task per dataset, labels offset by ``10 * task``, a transform pair each."""
        order, sources, leak, opts = self.order, self.sources, self.leak, request.opts
        parts: dict[str, list[ArrayImageDataset]] = {"train": [], "train_eval": [], "test": []}
        transforms: dict[str, TransformPair] = {}
        cifar_task = order.index("CIFAR10")
        for task, name in enumerate(order):
            data = sources[name]
            offset = task * CLASSES_PER_DATASET
            # a fresh transform pair per dataset: nothing can leak from one dataset to the
            # next, unless the official code's leak is asked for (every dataset after CIFAR-10
            # keeps the CIFAR transform, MoE_PromptCL datasets.py lines 68-72)
            kind = "cifar" if leak and task >= cifar_task else opts.kind(data.kind)
            pair = transforms[name] = build_transforms(kind, **opts.transform_args())
            parts["train"].append(ArrayImageDataset(data.train_images,
                                                    data.train_labels + offset, pair.train))
            parts["train_eval"].append(ArrayImageDataset(data.train_images,
                                                         data.train_labels + offset, pair.test))
            parts["test"].append(ArrayImageDataset(data.test_images, data.test_labels + offset,
                                                   pair.test))
        task_classes = [list(range(t * CLASSES_PER_DATASET, (t + 1) * CLASSES_PER_DATASET))
                        for t in range(len(order))]
        info = {
            "dataset": "5datasets",
            "dataset_order": order,
            "dataset_order_rule": (
                f"random.seed({request.seed}); random.shuffle({list(DATASET_NAMES)})"
                if opts.class_order == "seeded" else "standard order"),
            "label_offsets": {name: t * CLASSES_PER_DATASET for t, name in enumerate(order)},
            "class_order": [c for classes in task_classes for c in classes],
            "split": "each dataset's official train/test split",
            "num_train": {name: int(len(sources[name].train_labels)) for name in order},
            "num_test": {name: int(len(sources[name].test_labels)) for name in order},
            "source": {name: sources[name].provenance for name in order},
            "transforms": {name: transforms[name].describe() for name in order},
            "legacy_transform_leak": leak,
        }
        return Benchmark(name="5datasets", num_classes=len(order) * CLASSES_PER_DATASET,
                         train=_concat(parts["train"]), train_eval=_concat(parts["train_eval"]),
                         test=_concat(parts["test"]), task_classes=task_classes,
                         image_size=opts.image_size, info=info)


def _read(request: Request) -> FiveSources:
    opts, root = request.opts, request.root
    if opts.transforms == "coda":
        raise ValueError(f"transforms={opts.transforms!r} is not defined for 5datasets (neither "
                         "CODA-Prompt nor SMoPE has a 5-Datasets loader); use hide or port")
    if opts.num_tasks not in (None, len(DATASET_NAMES)):
        raise ValueError(f"5datasets has exactly {len(DATASET_NAMES)} tasks; got "
                         f"num_tasks={opts.num_tasks}")
    order = dataset_order(request.seed, opts.class_order)
    if not request.how.allow_download:  # report every missing dataset before extracting
        absent = [name for name in order if _is_missing(SOURCES[name], root)]
        if absent:
            raise DatasetNotFoundError("\n".join(
                _missing_message(SOURCES[name], root) for name in absent))
    sources, missing = {}, []
    for name in order:
        try:
            sources[name] = load_source(name, SOURCES[name], request.how)
        except DatasetNotFoundError as err:  # report every missing dataset at once
            missing.append(str(err))
    if missing:
        raise DatasetNotFoundError("\n".join(missing))
    return FiveSources(order, sources, request.own["legacy_transform_leak"])
