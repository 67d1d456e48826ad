"""Split CIFAR-100 on a fixture archive in the real pickle format."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import make_cifar, source_path, spec_fixtures

from cl.data import cifar100
from cl.data.builder import Fetching
from cl.data.registry import ChecksumError, DatasetNotFoundError, build_benchmark

fixture_spec, spec = spec_fixtures(cifar100, make_cifar)


def test_download_and_build(spec, tmp_path: Path) -> None:
    root = tmp_path / "data"
    bench = build_benchmark("cifar100", data_root=root, seed=42, download=True,
                            image_size=32, normalization="none", progress=False)
    assert (root / "cifar-100-python" / "train").is_file()
    assert bench.num_classes == 100 and bench.num_tasks == 10 and bench.image_size == 32
    assert len(bench.train.dataset) == spec.num_train == 200
    assert len(bench.train_eval.dataset) == 200 and len(bench.test.dataset) == 100
    # seeded order of docs/cl-background.md#splits, 10 consecutive classes per task
    order = list(range(100))
    random.seed(42)
    random.shuffle(order)
    assert bench.task_classes == [order[t * 10:(t + 1) * 10] for t in range(10)]
    assert bench.info["class_order"] == order
    assert sorted(np.unique(bench.test.targets)) == list(range(100))
    # images and labels stay paired: the red channel encodes the label
    for split in (bench.test, bench.train_eval):
        for index in (0, 17, len(split.targets) - 1):
            image, label = split.dataset[index]
            assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32)
            assert label == split.targets[index]
            assert abs(float(image[0].mean()) * 255 - label) < 1.0
    image, _ = bench.train.dataset[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    json.dumps(bench.info)  # provenance must be JSON-serialisable for env.json
    assert bench.info["source"]["archive_verified"] is True
    assert bench.info["source"]["archive"]["md5"] == spec.archive.md5


def test_paper_normalisation_is_cifar(spec, tmp_path: Path) -> None:
    bench = build_benchmark("cifar100", data_root=tmp_path, download=True, image_size=32,
                            progress=False)
    image, label = bench.test.dataset[0]
    expected = (label / 255 - 0.5071) / 0.2675
    assert float(image[0].mean()) == pytest.approx(expected, abs=0.02)
    assert tuple(bench.info["transforms"]["mean"]) == (0.5071, 0.4867, 0.4408)


def test_standard_order_and_num_tasks(spec, tmp_path: Path) -> None:
    bench = build_benchmark("cifar100", data_root=tmp_path, download=True, image_size=32,
                            class_order="standard", num_tasks=20, progress=False)
    assert bench.task_classes[0] == [0, 1, 2, 3, 4] and bench.num_tasks == 20


def test_missing_data_message_and_nothing_written(spec, tmp_path: Path) -> None:
    root = tmp_path / "absent"
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("cifar100", data_root=root, image_size=32)
    message = str(err.value)
    assert "https://" in message or "file://" in message
    assert spec.archive.url in message and "cifar-100-python/" in message
    assert not root.exists()


def test_missing_message_has_official_url(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="www.cs.toronto.edu/~kriz/cifar-100"):
        build_benchmark("cifar100", data_root=tmp_path)


def test_data_root_from_environment(spec, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NORGA_DATA", str(tmp_path / "envroot"))
    with pytest.raises(DatasetNotFoundError, match="envroot"):
        build_benchmark("cifar100", image_size=32)


def test_corrupt_user_archive_is_reported_and_kept(spec, tmp_path: Path) -> None:
    archive = tmp_path / spec.archive.filename
    data = bytearray(source_path(spec.archive).read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        build_benchmark("cifar100", data_root=tmp_path, download=True, image_size=32,
                        progress=False)
    assert str(archive) in str(err.value)
    assert archive.read_bytes() == bytes(data)
    assert not (tmp_path / "cifar-100-python").exists()


def test_truncated_archive_without_download(spec, tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / spec.archive.filename
    archive.write_bytes(source_path(spec.archive).read_bytes()[:5000])
    with pytest.raises(ChecksumError, match=spec.archive.filename):
        build_benchmark("cifar100", data_root=tmp_path, image_size=32)
    assert archive.stat().st_size == 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.archive.filename]


def test_user_extracted_folder_and_corrupt_pickle(spec, tmp_path: Path) -> None:
    shutil.unpack_archive(source_path(spec.archive), tmp_path)
    bench = build_benchmark("cifar100", data_root=tmp_path, image_size=32)
    assert len(bench.test.targets) == 100
    assert bench.info["source"]["archive_verified"] is False
    test_file = tmp_path / "cifar-100-python" / "test"
    test_file.write_bytes(test_file.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="cifar-100-python/test"):
        build_benchmark("cifar100", data_root=tmp_path, image_size=32)
    assert test_file.exists()


def test_unknown_option_is_rejected(spec, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="image_size"):
        build_benchmark("cifar100", data_root=tmp_path, imgsize=32)


class _RunsCode:
    """A pickle payload that would call ``marker.write_text`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_naming_anything_but_numpy_arrays_is_refused_unrun(tmp_path: Path) -> None:
    # even with a matching checksum (a forged spec, a bug in verification) no code can run:
    # the unpickler refuses every global but the few a numpy array is rebuilt from
    import dataclasses
    import hashlib
    import pickle

    marker = tmp_path / "marker"
    members = {"train": pickle.dumps({"data": _RunsCode(marker), "fine_labels": []}, protocol=2),
               "test": pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "fine_labels": []}),
               "meta": pickle.dumps({"fine_label_names": []})}
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    md5 = {n: hashlib.md5(d, usedforsecurity=False).hexdigest() for n, d in members.items()}
    spec = dataclasses.replace(cifar100.CIFAR100, train_files=(("train", md5["train"]),),
                               test_files=(("test", md5["test"]),),
                               meta_file=("meta", md5["meta"]))
    with pytest.raises(ChecksumError, match=r"train: refers to \S*getattr, .*only numpy arrays"):
        cifar100.load_cifar(spec, Fetching(tmp_path / "data", False))
    assert not marker.exists()
    # the same file through plain pickle.load would have run it (what the allow-list prevents)
    pickle.loads(members["train"])
    assert marker.read_text() == "code ran"


def test_numpy_arrays_in_both_module_spellings_are_read(tmp_path: Path) -> None:
    # the official files (Python 2, numpy 1) name numpy.core.multiarray; numpy 2 numpy._core
    import pickle

    batch = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "fine_labels": [4, 2]}
    new = pickle.dumps(batch, protocol=2)
    old = new.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in old
    for name, data in (("new", new), ("old", old)):
        (tmp_path / name).write_bytes(data)
        read = cifar100._read_pickle(tmp_path / name)
        assert read["data"].tolist() == batch["data"].tolist() and read["fine_labels"] == [4, 2]
