"""Split ImageNet-R on a fixture ``imagenet-r.tar``: fixed seed-independent split, no file moved."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import make_imagenet_r, source_path, spec_fixtures

from cl.data import imagenet_r
from cl.data.registry import ChecksumError, DatasetNotFoundError, build_benchmark

fixture_spec, spec = spec_fixtures(imagenet_r, make_imagenet_r)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _test_keys(bench) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in bench.test.dataset.paths]


def test_download_build_and_counts(spec, tmp_path: Path) -> None:
    bench = build_benchmark("imagenet-r", data_root=tmp_path, seed=42, download=True,
                            image_size=32, progress=False)
    assert bench.num_classes == spec.num_classes == 20 and bench.num_tasks == 10
    assert all(len(t) == 2 for t in bench.task_classes)
    assert sorted(c for t in bench.task_classes for c in t) == list(range(20))
    n_train, n_test = len(bench.train.targets), len(bench.test.targets)
    assert n_train + n_test == spec.num_images
    assert len(bench.train_eval.targets) == n_train
    # stratified 80/20: every class has round(0.2 n) test images
    for c in range(20):
        n = int((bench.train.targets == c).sum() + (bench.test.targets == c).sum())
        assert int((bench.test.targets == c).sum()) == int(np.floor(0.2 * n + 0.5))
    assert 0.15 < n_test / spec.num_images < 0.25
    # train and test are disjoint
    train_keys = {f"{p.parent.name}/{p.name}" for p in bench.train.dataset.paths}
    assert not train_keys & set(_test_keys(bench))
    image, label = bench.test.dataset[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == bench.test.targets[3]
    assert abs(float(image[0].mean()) * 255 - label) < 3  # red channel encodes the class
    train_image, _ = bench.train.dataset[0]
    assert train_image.shape == (3, 32, 32)
    json.dumps(bench.info)
    assert bench.info["split"]["rule"] == imagenet_r.SPLIT_RULE
    assert bench.info["source"]["archive_verified"] is True


def test_split_is_identical_across_seeds_and_documented_rule(spec, tmp_path: Path) -> None:
    shutil.copy(source_path(spec.archive), tmp_path / "imagenet-r.tar")
    a = build_benchmark("imagenet-r", data_root=tmp_path, seed=1, image_size=32)
    b = build_benchmark("imagenet-r", data_root=tmp_path, seed=2, image_size=32)
    assert a.task_classes != b.task_classes  # the seed changes the class order ...
    assert _test_keys(a) == _test_keys(b)  # ... but never the split
    assert a.info["split"]["test_set_sha256"] == b.info["split"]["test_set_sha256"]
    # independent re-implementation of the documented rule
    by_class: dict[str, list[str]] = {}
    for p in (tmp_path / "imagenet-r").rglob("*.jpg"):
        by_class.setdefault(p.parent.name, []).append(f"{p.parent.name}/{p.name}")
    expected = []
    for keys in by_class.values():
        keys.sort(key=lambda k: hashlib.sha256(k.encode()).hexdigest())
        expected += keys[: int(len(keys) * 0.2 + 0.5)]
    assert sorted(expected) == sorted(_test_keys(a))


def test_user_files_are_never_moved(spec, tmp_path: Path) -> None:
    shutil.copy(source_path(spec.archive), tmp_path / "imagenet-r.tar")
    build_benchmark("imagenet-r", data_root=tmp_path, image_size=32)
    before = _snapshot(tmp_path)
    bench = build_benchmark("imagenet-r", data_root=tmp_path, image_size=32)
    bench.test.dataset[0]
    assert _snapshot(tmp_path) == before


def test_tree_rearranged_by_original_code_gives_same_split(spec, tmp_path: Path) -> None:
    reference = build_benchmark("imagenet-r", data_root=tmp_path / "a", download=True,
                                image_size=32, progress=False)
    moved_root = tmp_path / "b" / "imagenet-r"
    with tarfile.open(source_path(spec.archive)) as tar:
        tar.extractall(tmp_path / "b" / "x", filter="data")
    for i, p in enumerate(sorted((tmp_path / "b" / "x" / "imagenet-r").rglob("*.jpg"))):
        dest = moved_root / ("test" if i % 4 == 0 else "train") / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        p.rename(dest)
    shutil.rmtree(tmp_path / "b" / "x")
    moved = build_benchmark("imagenet-r", data_root=tmp_path / "b", image_size=32)
    assert sorted(_test_keys(moved)) == sorted(_test_keys(reference))
    assert moved.info["split"]["test_set_sha256"] == reference.info["split"]["test_set_sha256"]


def test_missing_and_incomplete(spec, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("imagenet-r", data_root=tmp_path / "none")
    assert spec.archive.url in str(err.value) and "imagenet-r/<wnid>/" in str(err.value)
    assert not (tmp_path / "none").exists()
    with tarfile.open(source_path(spec.archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    victim = next((tmp_path / "imagenet-r").rglob("*.jpg"))
    os.remove(victim)
    with pytest.raises(ChecksumError, match=f"{spec.num_images - 1}"):
        build_benchmark("imagenet-r", data_root=tmp_path, image_size=32)


def test_corrupt_archive(spec, tmp_path: Path) -> None:
    archive = tmp_path / "imagenet-r.tar"
    archive.write_bytes(source_path(spec.archive).read_bytes()[:-2048])
    with pytest.raises(ChecksumError, match="imagenet-r.tar"):
        build_benchmark("imagenet-r", data_root=tmp_path, download=True, progress=False)
    assert archive.exists() and not (tmp_path / "imagenet-r").exists()


def test_official_constants() -> None:
    assert imagenet_r.IMAGENET_R.archive.url == \
        "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
    assert (imagenet_r.IMAGENET_R.num_classes, imagenet_r.IMAGENET_R.num_images) == (200, 30000)


def test_hide_split_reproduces_the_official_random_split(spec, tmp_path: Path) -> None:
    """MoE_PromptCL continual_datasets.py (Imagenet_R, lines 653-658): ``ImageFolder`` then
    ``random_split(dataset, [int(0.8 n), n - int(0.8 n)])`` (24000/6000) right after
    ``torch.manual_seed(seed)`` of the first run (seed 42 in the scripts), files then moved
    into ``train/`` and ``test/`` (docs/cl-background.md#splits)."""
    from torch.utils.data import random_split

    shutil.copy(source_path(spec.archive), tmp_path / "imagenet-r.tar")
    bench = build_benchmark("imagenet-r", data_root=tmp_path, seed=1, image_size=32,
                            split="hide")
    # independent reference: ImageFolder order and torch's own random_split
    tree = tmp_path / "imagenet-r"
    folder = sorted((f"{c.name}/{p.name}" for c in sorted(tree.iterdir()) if c.is_dir()
                     for p in sorted(c.iterdir())), key=lambda k: (k.split("/")[0], k))
    n = len(folder)
    n_train = int(0.8 * n)  # continual_datasets.py lines 655-658
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)
        train_idx, test_idx = random_split(range(n), [n_train, n - n_train])
    assert sorted(_test_keys(bench)) == sorted(folder[i] for i in test_idx)
    assert {f"{p.parent.name}/{p.name}" for p in bench.train.dataset.paths} == {
        folder[i] for i in train_idx}
    assert bench.info["split"]["rule"] == imagenet_r.HIDE_SPLIT_RULE
    assert bench.info["split"]["test_set_sha256"] != build_benchmark(
        "imagenet-r", data_root=tmp_path, image_size=32).info["split"]["test_set_sha256"]
    # a tree already split by that code is used as it is (whatever seed made it)
    moved = tmp_path / "b" / "imagenet-r"
    for i, key in enumerate(folder):
        dest = moved / ("test" if i % 3 == 0 else "train") / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / key, dest)
    on_disk = build_benchmark("imagenet-r", data_root=tmp_path / "b", image_size=32,
                              split="hide")
    assert sorted(_test_keys(on_disk)) == sorted(k for i, k in enumerate(folder) if i % 3 == 0)
    with pytest.raises(ValueError, match="split must be one of fixed, hide"):
        build_benchmark("imagenet-r", data_root=tmp_path, split="coda")


def test_hide_split_sizes_follow_int_of_0_8_n() -> None:
    """``train_size = int(0.8 * len(dataset))`` (continual_datasets.py line 655): 80 of 101."""
    images = {f"n{c}": [(f"n{c}/{i:03d}.jpg", Path(f"/x/imagenet-r/n{c}/{i:03d}.jpg"))
                        for i in range(c * 10, c * 10 + (11 if c == 0 else 10))]
              for c in range(10)}
    train, test = imagenet_r.hide_split(images)
    assert (len(train), len(test)) == (80, 21)
    assert not {k for k, _ in train} & {k for k, _ in test}
