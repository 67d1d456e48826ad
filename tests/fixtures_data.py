"""Tiny datasets written in the exact on-disk format of the real archives.

Each ``make_*`` function writes the archive(s) into ``server`` (a folder standing in for the
download site, reached through ``file://`` URLs) and returns the dataset spec of the loader with
the real URLs and checksums replaced by the fixture's; tests install it with ``monkeypatch``.
Pixel values encode the label so that tests can check that images and labels stay paired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from cl.data import cifar100
from cl.data.download import Resource


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def file_resource(path: Path, *, checksum: bool = True) -> Resource:
    """A resource served from ``path`` through a ``file://`` URL."""
    return Resource(path.name, (path.resolve().as_uri(),),
                    md5=md5_of(path) if checksum else None)


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
    if cifar10:
        from cl.data import five_datasets

        base = five_datasets.CIFAR10
    else:
        base = cifar100.CIFAR100
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
