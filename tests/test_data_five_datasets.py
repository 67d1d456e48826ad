"""5-Datasets on fixtures of its five sources (CIFAR-10 pickles, MNIST/Fashion-MNIST IDX gzip,
SVHN .mat, notMNIST zip), including the per-dataset transform guarantee
(docs/cl-background.md#five-datasets-transforms)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import make_five_datasets
from torchvision import transforms as T

from cl.data import five_datasets
from cl.data.builder import Fetching
from cl.data.registry import ChecksumError, DatasetNotFoundError, build_benchmark
from cl.data.transforms import CIFAR_MEAN


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return make_five_datasets(tmp_path_factory.mktemp("server"))


@pytest.fixture
def patched(sources, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setattr(five_datasets, "SOURCES", sources)
    return sources


@pytest.fixture
def bench(patched, tmp_path: Path):
    return build_benchmark("5datasets", data_root=tmp_path, seed=42, download=True,
                           image_size=16, progress=False)


def test_seed_42_dataset_order_matches_spec() -> None:
    assert five_datasets.dataset_order(42) == ["NotMNIST", "MNIST", "CIFAR10", "FashionMNIST",
                                               "SVHN"]
    assert five_datasets.dataset_order(42, "standard") == list(five_datasets.DATASET_NAMES)


def test_layout_counts_and_labels(bench, tmp_path: Path) -> None:
    assert {p.name for p in tmp_path.iterdir()} >= {
        "cifar-10-batches-py", "MNIST", "FashionMNIST", "SVHN", "notMNIST"}
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    assert bench.num_classes == 50 and bench.num_tasks == 5
    assert bench.task_classes == [list(range(10 * t, 10 * t + 10)) for t in range(5)]
    info = bench.info
    assert info["dataset_order"] == ["NotMNIST", "MNIST", "CIFAR10", "FashionMNIST", "SVHN"]
    assert info["label_offsets"] == {"NotMNIST": 0, "MNIST": 10, "CIFAR10": 20,
                                     "FashionMNIST": 30, "SVHN": 40}
    # sizes: notMNIST 3 per letter minus the broken file, MNIST-likes 30, CIFAR-10 30, SVHN 30
    assert info["num_train"] == {"NotMNIST": 30, "MNIST": 30, "CIFAR10": 30,
                                 "FashionMNIST": 30, "SVHN": 30}
    assert info["num_test"] == {"NotMNIST": 20, "MNIST": 20, "CIFAR10": 20,
                                "FashionMNIST": 20, "SVHN": 20}
    assert info["source"]["NotMNIST"]["skipped_unreadable"] == ["Train/F/broken.png"]
    assert info["source"]["NotMNIST"]["archive_sha256"]  # recorded although unpublished
    assert len(bench.train.targets) == 150 and len(bench.test.targets) == 100
    for t in range(5):
        assert np.bincount(bench.test.targets, minlength=50)[10 * t:10 * t + 10].tolist() == \
            [2] * 10
    json.dumps(info)


def _first(split, task: int) -> int:
    return int(np.flatnonzero(split.targets // 10 == task)[0])


def test_images_are_rgb_and_paired(bench) -> None:
    # task -> (value of channel 0 at label l) for the un-normalised sources
    expected = {0: lambda l: 100 + l, 1: lambda l: l, 3: lambda l: 20 + l, 4: lambda l: 40 + l}
    for split in (bench.test, bench.train_eval):
        for task, value in expected.items():
            for index in np.flatnonzero(split.targets // 10 == task)[:4]:
                image, label = split.dataset[int(index)]
                assert isinstance(image, torch.Tensor) and image.shape == (3, 16, 16)
                assert label == split.targets[index] and label // 10 == task
                local = label - 10 * task
                assert float(image[0].mean()) * 255 == pytest.approx(value(local), abs=1.0)
                if task in (0, 1, 3):  # grayscale sources: three equal channels
                    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    image, label = bench.train.dataset[_first(bench.train, 2)]
    assert image.shape == (3, 16, 16) and 20 <= label < 30


def _pipeline(split, task: int) -> list[object]:
    concat = split.dataset
    return list(concat.datasets[task].transform.transforms)


def test_each_dataset_has_its_own_transform(bench) -> None:
    """docs/cl-background.md#five-datasets-transforms: in the original code every dataset after
    CIFAR10 (with seed 42: FashionMNIST and SVHN) inherited the CIFAR transform. Here only CIFAR10
    has it."""
    order = bench.info["dataset_order"]
    objects: dict[str, set[int]] = {name: set() for name in order}
    for split in (bench.train, bench.train_eval, bench.test):
        for task, name in enumerate(order):
            pipeline = _pipeline(split, task)
            normalizers = [t for t in pipeline if isinstance(t, T.Normalize)]
            jitters = [t for t in pipeline if isinstance(t, T.ColorJitter)]
            if name == "CIFAR10":
                assert len(normalizers) == 1 and tuple(normalizers[0].mean) == CIFAR_MEAN
                assert len(jitters) == (1 if split is bench.train else 0)
            else:
                assert normalizers == [] and jitters == [], name
            transform = split.dataset.datasets[task].transform
            objects[name] |= {id(transform)} | {id(t) for t in transform.transforms}
    for i, a in enumerate(order):  # no transform object is shared between two datasets
        for b in order[i + 1:]:
            assert not objects[a] & objects[b], (a, b)
    # behaviour, not only structure: a white image stays in [0, 1] for FashionMNIST/SVHN
    for task, name in enumerate(order):
        white = _pipeline(bench.test, task)
        out = T.Compose(white)(T.functional.to_pil_image(torch.ones(3, 20, 20)))
        if name == "CIFAR10":
            assert float(out[0].max()) == pytest.approx((1 - 0.5071) / 0.2675, abs=1e-3)
        else:
            assert float(out.max()) == pytest.approx(1.0)
    assert bench.info["transforms"]["SVHN"]["mean"] is None
    assert tuple(bench.info["transforms"]["CIFAR10"]["mean"]) == CIFAR_MEAN


def test_legacy_transform_leak_reproduces_the_official_bug(patched, tmp_path: Path) -> None:
    """MoE_PromptCL datasets.py lines 68-72: ``transform_train/val`` are replaced by the CIFAR
    ones when CIFAR10 is reached and never reset, so with seed 42 (NotMNIST, MNIST, CIFAR10,
    FashionMNIST, SVHN) FashionMNIST and SVHN get CIFAR-100 mean/std and colour jitter too."""
    bench = build_benchmark("5datasets", data_root=tmp_path, seed=42, download=True,
                            image_size=16, progress=False, legacy_transform_leak=True)
    order = bench.info["dataset_order"]
    assert order == ["NotMNIST", "MNIST", "CIFAR10", "FashionMNIST", "SVHN"]
    leaked = {"CIFAR10", "FashionMNIST", "SVHN"}
    for split in (bench.train, bench.train_eval, bench.test):
        for task, name in enumerate(order):
            pipeline = _pipeline(split, task)
            normalizers = [t for t in pipeline if isinstance(t, T.Normalize)]
            jitters = [t for t in pipeline if isinstance(t, T.ColorJitter)]
            if name in leaked:
                assert len(normalizers) == 1 and tuple(normalizers[0].mean) == CIFAR_MEAN, name
                assert len(jitters) == (1 if split is bench.train else 0), name
            else:
                assert normalizers == [] and jitters == [], name
    assert bench.info["legacy_transform_leak"] is True
    with pytest.raises(ValueError, match="legacy_transform_leak"):
        build_benchmark("5datasets", data_root=tmp_path, legacy_transform_leak="yes")


def test_backbone_normalisation_applies_to_all(patched, tmp_path: Path) -> None:
    bench = build_benchmark("5datasets", data_root=tmp_path, download=True, image_size=16,
                            normalization="backbone", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                            progress=False)
    for task in range(5):
        normalizers = [t for t in _pipeline(bench.test, task) if isinstance(t, T.Normalize)]
        assert len(normalizers) == 1 and tuple(normalizers[0].mean) == (0.5, 0.5, 0.5)


def test_all_missing_datasets_reported_at_once(patched, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("5datasets", data_root=tmp_path)
    message = str(err.value)
    for name in ("SVHN", "MNIST", "CIFAR-10", "notMNIST", "FashionMNIST"):
        assert name in message
    for spec in patched.values():
        for url in _urls(spec):
            assert url in message
    assert list(tmp_path.iterdir()) == []


def _urls(spec: object) -> list[str]:
    if isinstance(spec, five_datasets.IdxSpec):
        return [spec.train_images.url, spec.test_labels.url]
    if isinstance(spec, five_datasets.SvhnSpec):
        return [spec.train.url, spec.test.url]
    return [spec.archive.url]  # type: ignore[attr-defined]


def test_official_urls_in_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("5datasets", data_root=tmp_path)
    message = str(err.value)
    assert "ufldl.stanford.edu/housenumbers/train_32x32.mat" in message
    assert "Adversarial-Continual-Learning/raw/main/data/notMNIST.zip" in message
    assert "cifar-10-python.tar.gz" in message and "train-images-idx3-ubyte.gz" in message


def test_corrupt_svhn_mat_is_reported_and_kept(patched, tmp_path: Path) -> None:
    build_benchmark("5datasets", data_root=tmp_path, download=True, image_size=16,
                    progress=False)
    mat = tmp_path / "SVHN" / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:-100])
    with pytest.raises(ChecksumError, match="test_32x32.mat"):
        build_benchmark("5datasets", data_root=tmp_path, image_size=16)
    assert mat.exists()


def test_num_tasks_must_be_five(patched, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="5"):
        build_benchmark("5datasets", data_root=tmp_path, num_tasks=10)


def test_missing_check_happens_before_any_extraction(patched, tmp_path: Path) -> None:
    from fixtures_data import source_path

    cifar = patched["CIFAR10"]
    (tmp_path / cifar.archive.filename).write_bytes(source_path(cifar.archive).read_bytes())
    with pytest.raises(DatasetNotFoundError, match="SVHN"):
        build_benchmark("5datasets", data_root=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [cifar.archive.filename]


def test_notmnist_zip_without_inner_folder(tmp_path: Path) -> None:
    from fixtures_data import make_notmnist

    spec = make_notmnist(tmp_path / "server", prefix="", broken=False)
    how = Fetching(tmp_path / "data", True, None, False)
    data = five_datasets.load_source("NotMNIST", spec, how)
    assert len(data.train_labels) == 30 and len(data.test_labels) == 20
    assert data.train_images.shape == (30, 28, 28)
    assert sorted(set(data.test_labels.tolist())) == list(range(10))


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    import gzip

    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03"))
    assert five_datasets.read_idx(good).tolist() == [1, 2, 3]
    for name, payload in (("short.gz", gzip.compress(b"\x00\x00\x08\x03\x00")),
                          ("size.gz", gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big")
                                                    + b"\x01")),
                          ("notgz.gz", b"plain bytes")):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ChecksumError, match=name):
            five_datasets.read_idx(tmp_path / name)


# ---------------------------------------------------------------- official trees, read in place
def _arrays(bench, name: str) -> tuple[np.ndarray, np.ndarray]:
    task = bench.info["dataset_order"].index(name)
    part = bench.train.dataset.datasets[task]
    return np.asarray(part.images), np.asarray(part.labels)


def test_official_svhn_and_mnist_trees_are_read_in_place(bench, tmp_path: Path) -> None:
    """torchvision.datasets.SVHN (so the official code) reads ``<root>/{train,test}_32x32.mat``;
    the official ``MNIST_RGB(datasets.MNIST)`` keeps ``<root>/MNIST_RGB/raw`` (MoE_PromptCL
    continual_datasets.py line 23, torchvision ``raw_folder`` = root/<class name>/raw), where
    torchvision leaves both the ``.gz`` and the extracted file."""
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / "SVHN" / name).rename(tmp_path / name)
    (tmp_path / "SVHN").rmdir()
    (tmp_path / "MNIST_RGB").mkdir()
    (tmp_path / "MNIST" / "raw").rename(tmp_path / "MNIST_RGB" / "raw")
    (tmp_path / "MNIST").rmdir()
    raw = tmp_path / "MNIST_RGB" / "raw"
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # extracted copies only
        (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
        (raw / f"{name}.gz").unlink()
    again = build_benchmark("5datasets", data_root=tmp_path, seed=42, download=False,
                            image_size=16, progress=False)
    for name in ("SVHN", "MNIST"):
        for a, b in zip(_arrays(bench, name), _arrays(again, name), strict=True):
            np.testing.assert_array_equal(a, b)
    source = again.info["source"]
    assert source["SVHN"]["folder"] == str(tmp_path.resolve())
    assert source["MNIST"]["folder"] == str(raw.resolve())
    assert source["MNIST"]["uncompressed_unverified"] == ["train-images-idx3-ubyte",
                                                          "t10k-labels-idx1-ubyte"]
    assert not (tmp_path / "SVHN").exists() and not (tmp_path / "MNIST").exists()  # nothing moved


def test_partial_or_pickled_trees_are_refused_naming_found_and_expected(bench,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "SVHN" / "test_32x32.mat").rename(tmp_path / "test_32x32.mat")
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("5datasets", data_root=tmp_path, download=False, progress=False)
    message = str(err.value)
    assert f"found {tmp_path / 'SVHN'}/ with only train_32x32.mat" in message
    assert f"{tmp_path}/ with only test_32x32.mat" in message
    assert "expected all of train_32x32.mat, test_32x32.mat" in message
    (tmp_path / "test_32x32.mat").rename(tmp_path / "SVHN" / "test_32x32.mat")
    # an old torchvision tree: processed/*.pt pickles only -> refused, never unpickled
    (tmp_path / "MNIST" / "raw").rename(tmp_path / "elsewhere")
    (tmp_path / "MNIST_RGB" / "processed").mkdir(parents=True)
    (tmp_path / "MNIST_RGB" / "processed" / "training.pt").write_bytes(b"not to be unpickled")
    (tmp_path / "MNIST_RGB" / "raw").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("5datasets", data_root=tmp_path, download=False, progress=False)
    message = str(err.value)
    assert "MNIST_RGB/processed/*.pt (old torchvision pickles" in message
    assert f"{tmp_path / 'MNIST/raw'}/ or {tmp_path / 'MNIST_RGB/raw'}/" in message
