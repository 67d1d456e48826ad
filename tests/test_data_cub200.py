"""Split CUB-200-2011 on a fixture ``CUB_200_2011.tgz`` read through its list files."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import make_cub, source_path, spec_fixtures

from cl.data import cub200
from cl.data.registry import ChecksumError, DatasetNotFoundError, build_benchmark

fixture_spec, spec = spec_fixtures(cub200, make_cub)


def test_download_build_official_split(spec, tmp_path: Path) -> None:
    bench = build_benchmark("cub200", data_root=tmp_path, seed=40, download=True,
                            image_size=24, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CUB_200_2011", "CUB_200_2011.tgz"]
    assert bench.num_classes == 20 and bench.num_tasks == 10
    assert len(bench.train.targets) == spec.num_train == 60
    assert len(bench.test.targets) == spec.num_test == 40
    # train_test_split.txt: the first 3 images of each class are train, the last 2 test
    assert all(int(p.stem.split("_")[2]) < 3 for p in bench.train.dataset.paths)
    assert all(int(p.stem.split("_")[2]) >= 3 for p in bench.test.dataset.paths)
    # label = class id - 1 (class dir "007.Bird_7" -> 6)
    for path, label in zip(bench.test.dataset.paths, bench.test.targets, strict=True):
        assert int(path.parent.name.split(".")[0]) - 1 == label
    assert np.bincount(bench.test.targets).tolist() == [2] * 20
    image, label = bench.test.dataset[5]
    assert image.shape == (3, 24, 24) and label == bench.test.targets[5]
    assert abs(float(image[0].mean()) * 255 - label) < 3
    assert bench.train.dataset[0][0].shape == (3, 24, 24)
    assert bench.train_eval.dataset[0][0].shape == (3, 24, 24)
    assert bench.info["class_names"][0] == "001.Bird_1"
    json.dumps(bench.info)


def test_missing_data(spec, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("cub200", data_root=tmp_path / "none")
    assert spec.archive.url in str(err.value) and "train_test_split.txt" in str(err.value)


def test_official_url_in_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="data.caltech.edu"):
        build_benchmark("cub200", data_root=tmp_path)


def test_corrupt_archive_kept(spec, tmp_path: Path) -> None:
    data = bytearray(source_path(spec.archive).read_bytes())
    data[100] ^= 1
    (tmp_path / "CUB_200_2011.tgz").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="CUB_200_2011.tgz"):
        build_benchmark("cub200", data_root=tmp_path)
    assert (tmp_path / "CUB_200_2011.tgz").read_bytes() == bytes(data)
    assert not (tmp_path / "CUB_200_2011").exists()


def test_inconsistent_lists_are_rejected(spec, tmp_path: Path) -> None:
    with tarfile.open(source_path(spec.archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    tree = tmp_path / "CUB_200_2011"
    labels = tree / "image_class_labels.txt"
    original = labels.read_text()
    labels.write_text(original.replace("1 1\n", "1 2\n", 1))
    with pytest.raises(ChecksumError, match="labelled"):
        build_benchmark("cub200", data_root=tmp_path)
    labels.write_text(original)
    victim = next((tree / "images").rglob("*.jpg"))
    shutil.move(victim, tmp_path / "elsewhere.jpg")
    with pytest.raises(ChecksumError, match="missing"):
        build_benchmark("cub200", data_root=tmp_path)


def _rearrange_like_norga(tree: Path, limit: int | None = None) -> None:
    """What MoE_PromptCL continual_datasets.py ``CUB200.split`` (lines 459-490) does: move each
    image of images.txt to ``train/`` or ``test/<class dir>/`` by train_test_split.txt."""
    images = (tree / "images.txt").read_text().split("\n")
    flags = (tree / "train_test_split.txt").read_text().split("\n")
    moved = 0
    for image, flag in zip(images, flags, strict=True):
        if not image.strip() or (limit is not None and moved >= limit):
            continue
        rel = image.split(" ")[-1]
        dst = tree / ("train" if flag.split(" ")[-1] == "1" else "test") / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tree / "images" / rel, dst)
        moved += 1


def test_tree_rearranged_by_the_official_code_is_read_in_place(spec, tmp_path: Path) -> None:
    with tarfile.open(source_path(spec.archive)) as tar:
        tar.extractall(tmp_path / "a", filter="data")
        tar.extractall(tmp_path / "b", filter="data")
    _rearrange_like_norga(tmp_path / "b" / "CUB_200_2011")
    assert not list((tmp_path / "b" / "CUB_200_2011" / "images").rglob("*.jpg"))
    plain = build_benchmark("cub200", data_root=tmp_path / "a", seed=40, image_size=24,
                            progress=False)
    moved = build_benchmark("cub200", data_root=tmp_path / "b", seed=40, image_size=24,
                            progress=False)
    for split in ("train", "test"):
        a, b = getattr(plain, split), getattr(moved, split)
        np.testing.assert_array_equal(a.targets, b.targets)
        assert [p.relative_to(tmp_path / "a" / "CUB_200_2011" / "images") for p in
                a.dataset.paths] == [p.relative_to(tmp_path / "b" / "CUB_200_2011" / split)
                                     for p in b.dataset.paths]
        image_a, label_a = a.dataset[3]
        image_b, label_b = b.dataset[3]
        assert label_a == label_b and np.array_equal(np.asarray(image_a), np.asarray(image_b))
    assert "rearranged by the HiDe/NoRGa code" in moved.info["split"]
    assert "the official archive" in plain.info["split"]


def test_half_rearranged_tree_is_refused_naming_both_layouts(spec, tmp_path: Path) -> None:
    with tarfile.open(source_path(spec.archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    _rearrange_like_norga(tmp_path / "CUB_200_2011", limit=30)
    with pytest.raises(ChecksumError) as err:
        build_benchmark("cub200", data_root=tmp_path)
    message = str(err.value)
    assert "the images are split between the two layouts" in message
    assert "found 70 of the 100 listed images under images/ and 30 under train/ + test/" in \
        message
    assert "images/<class dir>/" in message and "{train,test}/<class dir>/" in message
