"""Tiny datasets written in the exact on-disk format of the real archives.

Each ``make_*`` function writes the archive(s) into ``server`` (a folder standing in for the
download site, reached through ``file://`` URLs) and returns the dataset spec of the loader with
the real URLs and checksums replaced by the fixture's; tests install it with ``monkeypatch``.
Pixel values encode the label so that tests can check that images and labels stay paired.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cl.data import cifar100, cub200, five_datasets, imagenet_r
from cl.data.download import Resource


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def source_path(resource: Resource) -> Path:
    """The local file behind a fixture resource's ``file://`` URL."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    return Path(url2pathname(urlparse(resource.url).path))


def file_resource(path: Path, *, checksum: bool = True) -> Resource:
    """A resource served from ``path`` through a ``file://`` URL."""
    return Resource(path.name, (path.resolve().as_uri(),),
                    md5=md5_of(path) if checksum else None)


def spec_fixtures(module: ModuleType, make: Callable[[Path], Any]) -> tuple[Any, Any]:
    """The pytest fixtures ``(fixture_spec, spec)`` of a test module of ``module``'s loader.

    ``fixture_spec`` (module scope) writes the fixture archive with ``make(server)`` once;
    ``spec`` installs it as ``module.SPEC`` for one test (undone afterwards) and returns it.
    Use as ``fixture_spec, spec = spec_fixtures(cub200, make_cub)``: pytest finds fixtures
    under the names they are assigned to.
    """

    @pytest.fixture(scope="module")
    def fixture_spec(tmp_path_factory: pytest.TempPathFactory) -> Any:
        return make(tmp_path_factory.mktemp("server"))

    @pytest.fixture
    def spec(fixture_spec: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
        monkeypatch.setattr(module, "SPEC", fixture_spec)
        return fixture_spec

    return fixture_spec, spec


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(label: int, size: tuple[int, int] = (12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (label % 256, 80, 160)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- CIFAR


def _cifar_images(labels: np.ndarray) -> np.ndarray:
    # channel-major rows of 3072 bytes as in the real files; red channel = label
    images = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    images[:, 0] = labels[:, None, None]
    images[:, 1, :16] = 200
    return images.reshape(len(labels), 3072)


def make_cifar(server: Path, *, cifar10: bool = False, num_classes: int | None = None,
               train_per_class: int = 2, test_per_class: int = 1,
               ) -> cifar100.CifarSpec:
    """``cifar-100-python.tar.gz`` (pickles ``train``/``test``/``meta``) or
    ``cifar-10-python.tar.gz`` (``data_batch_1..5``/``test_batch``/``batches.meta``)."""
    base = five_datasets.CIFAR10 if cifar10 else cifar100.CIFAR100
    classes = num_classes or base.num_classes
    rng = np.random.default_rng(0)
    train_labels = rng.permutation(np.repeat(np.arange(classes), train_per_class))
    test_labels = rng.permutation(np.repeat(np.arange(classes), test_per_class))
    names = [f"class_{c}" for c in range(classes)]
    server.mkdir(parents=True, exist_ok=True)
    members: dict[str, bytes] = {}
    train_chunks = np.array_split(np.arange(len(train_labels)), len(base.train_files))
    for (name, _), idx in zip(base.train_files, train_chunks, strict=True):
        batch = {"batch_label": f"training batch {name}",
                 base.label_key: train_labels[idx].tolist(),
                 "data": _cifar_images(train_labels[idx]),
                 "filenames": [f"img_{i}.png" for i in idx]}
        if not cifar10:
            batch["coarse_labels"] = (train_labels[idx] // 5).tolist()
        members[name] = pickle.dumps(batch, protocol=2)
    test = {"batch_label": "testing batch 1", base.label_key: test_labels.tolist(),
            "data": _cifar_images(test_labels),
            "filenames": [f"test_{i}.png" for i in range(len(test_labels))]}
    if not cifar10:
        test["coarse_labels"] = (test_labels // 5).tolist()
    members[base.test_files[0][0]] = pickle.dumps(test, protocol=2)
    meta = {base.names_key: names}
    if not cifar10:
        meta["coarse_label_names"] = [f"super_{c}" for c in range(20)]
    else:
        meta.update(num_cases_per_batch=len(train_chunks[0]), num_vis=3072)
    members[base.meta_file[0]] = pickle.dumps(meta, protocol=2)
    if cifar10:
        members["readme.html"] = b"<html>CIFAR-10</html>"  # as in the real archive

    archive = server / base.archive.filename
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            _add_bytes(tar, f"{base.folder}/{name}", data)
    sums = {name: hashlib.md5(data, usedforsecurity=False).hexdigest()
            for name, data in members.items()}
    return dataclasses.replace(
        base, archive=file_resource(archive),
        train_files=tuple((n, sums[n]) for n, _ in base.train_files),
        test_files=tuple((n, sums[n]) for n, _ in base.test_files),
        meta_file=(base.meta_file[0], sums[base.meta_file[0]]),
        num_classes=classes, num_train=len(train_labels), num_test=len(test_labels))


# ----------------------------------------------------------------------------- ImageNet-R


def imagenet_r_members(num_classes: int = 20, min_images: int = 6, max_images: int = 14,
                       ) -> dict[str, bytes]:
    """``imagenet-r/<wnid>/<file>.jpg`` members with uneven class sizes (red = class index)."""
    rng = np.random.default_rng(1)
    members = {}
    for index in range(num_classes):
        wnid = f"n{1440000 + 7919 * index:08d}"
        for k in range(int(rng.integers(min_images, max_images + 1))):
            style = ("art", "cartoon", "sketch", "toy")[k % 4]
            members[f"imagenet-r/{wnid}/{style}_{k}.jpg"] = _jpeg(index)
    members["imagenet-r/README.txt"] = b"ImageNet-R fixture"  # the real tar has one too
    return members


def make_imagenet_r(server: Path, **kw: int) -> imagenet_r.ImageNetRSpec:
    """``imagenet-r.tar`` (uncompressed tar) with ``imagenet-r/<wnid>/*.jpg``."""
    members = imagenet_r_members(**kw)
    server.mkdir(parents=True, exist_ok=True)
    archive = server / "imagenet-r.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            _add_bytes(tar, name, data)
    images = [name for name in members if name.endswith(".jpg")]
    return dataclasses.replace(imagenet_r.IMAGENET_R, archive=file_resource(archive),
                               num_classes=len({name.split("/")[1] for name in images}),
                               num_images=len(images))


# ----------------------------------------------------------------------------- CUB


def make_cub(server: Path, num_classes: int = 20, per_class: int = 5) -> cub200.CubSpec:
    """``CUB_200_2011.tgz`` with the four list files and ``images/<class dir>/*.jpg``; like
    the real archive it also holds a file outside ``CUB_200_2011/``."""
    members: dict[str, bytes] = {"attributes.txt": b"1 has_bill_shape::curved\n"}
    images, labels, split, classes = [], [], [], []
    image_id = 0
    for class_id in range(1, num_classes + 1):
        class_dir = f"{class_id:03d}.Bird_{class_id}"
        classes.append(f"{class_id} {class_dir}")
        for k in range(per_class):
            image_id += 1
            rel = f"{class_dir}/Bird_{class_id}_{k:04d}_{image_id}.jpg"
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {1 if k < per_class - 2 else 0}")
            members[f"CUB_200_2011/images/{rel}"] = _jpeg(class_id - 1, size=(14, 11))
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
        members[f"CUB_200_2011/{name}"] = ("\n".join(lines) + "\n").encode()
    members["CUB_200_2011/README"] = b"fixture"
    server.mkdir(parents=True, exist_ok=True)
    archive = server / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            _add_bytes(tar, name, data)
    train = num_classes * (per_class - 2)
    return dataclasses.replace(cub200.CUB_200_2011, archive=file_resource(archive),
                               num_classes=num_classes, num_images=num_classes * per_class,
                               num_train=train, num_test=num_classes * 2)


# ----------------------------------------------------------------------------- 5-Datasets


def _idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def make_idx(server: Path, base: five_datasets.IdxSpec, train_per_class: int = 3,
             test_per_class: int = 2, value_offset: int = 0) -> five_datasets.IdxSpec:
    """The four MNIST-format ``*-ubyte.gz`` files (28x28 images, pixel = label + offset)."""
    folder = server / base.folder
    folder.mkdir(parents=True, exist_ok=True)
    resources = {}
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10), per_class)
        images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        images[:] = (labels + value_offset)[:, None, None]
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = folder / f"{split}-{kind}-ubyte.gz"
            path.write_bytes(_idx_bytes(array))
            resources[f"{split}_{kind.split('-')[0]}"] = file_resource(path)
    return dataclasses.replace(
        base, train_images=resources["train_images"], train_labels=resources["train_labels"],
        test_images=resources["t10k_images"], test_labels=resources["t10k_labels"],
        num_train=10 * train_per_class, num_test=10 * test_per_class)


def make_svhn(server: Path, num_train: int = 30, num_test: int = 20) -> five_datasets.SvhnSpec:
    """``train_32x32.mat``/``test_32x32.mat``: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) with
    digit 0 stored as 10."""
    from scipy.io import savemat

    folder = server / "SVHN"
    folder.mkdir(parents=True, exist_ok=True)
    resources = []
    for name, count in (("train_32x32.mat", num_train), ("test_32x32.mat", num_test)):
        digits = np.arange(count) % 10
        stored = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        images = np.zeros((32, 32, 3, count), dtype=np.uint8)
        images[:, :, 0, :] = (40 + digits)[None, None, :]
        savemat(folder / name, {"X": images, "y": stored})
        resources.append(file_resource(folder / name))
    return dataclasses.replace(five_datasets.SVHN, train=resources[0], test=resources[1],
                               num_train=num_train, num_test=num_test)


def make_notmnist(server: Path, per_letter: int = 3, broken: bool = True,
                  prefix: str = "notMNIST/") -> five_datasets.NotMnistSpec:
    """``notMNIST.zip`` holding ``notMNIST/{Train,Test}/{A..J}/*.png`` (28x28 grayscale,
    pixel = 100 + label), plus one unreadable PNG as in the real set."""
    server.mkdir(parents=True, exist_ok=True)
    archive = server / "notMNIST.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for split, count in (("Train", per_letter), ("Test", 2)):
            for label, letter in enumerate("ABCDEFGHIJ"):
                for k in range(count):
                    glyph = np.full((28, 28), 100 + label, dtype=np.uint8)
                    zipped.writestr(f"{prefix}{split}/{letter}/Zm9udF97a30=_{k}.png",
                                    _png(glyph))
        if broken:
            zipped.writestr(f"{prefix}Train/F/broken.png", b"\x89PNG\r\n")
    return dataclasses.replace(five_datasets.NOT_MNIST,
                               archive=file_resource(archive, checksum=False))


def make_five_datasets(server: Path) -> dict[str, object]:
    """Fixture specs of all five sources (for ``five_datasets.SOURCES``)."""
    return {
        "SVHN": make_svhn(server),
        "MNIST": make_idx(server, five_datasets.MNIST),
        "CIFAR10": make_cifar(server, cifar10=True, train_per_class=3, test_per_class=2),
        "NotMNIST": make_notmnist(server),
        "FashionMNIST": make_idx(server, five_datasets.FASHION_MNIST, value_offset=20),
    }
