"""Class order, task split, options, data root and transforms shared by the real benchmarks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from cl.data.realdata import RealDataOptions, class_order, resolve_data_root, split_into_tasks
from cl.data.transforms import CIFAR_MEAN, CIFAR_STD, build_transforms, eval_resize_size

# Verification prefixes of docs/cl-background.md#splits (first 10 classes).
SPEC_PREFIXES = {
    (100, 42): [42, 41, 91, 9, 65, 50, 1, 70, 15, 78],
    (100, 40): [8, 28, 21, 83, 24, 54, 48, 77, 23, 73],
    (100, 44): [54, 31, 82, 46, 25, 63, 70, 10, 32, 26],
    (200, 42): [66, 187, 101, 193, 111, 121, 13, 2, 64, 44],
    (200, 40): [47, 26, 156, 136, 187, 153, 186, 105, 6, 122],
    (200, 44): [13, 44, 110, 39, 1, 30, 149, 21, 52, 20],
}


@pytest.mark.parametrize(("num_classes", "seed"), sorted(SPEC_PREFIXES))
def test_class_order_matches_spec_prefixes(num_classes: int, seed: int) -> None:
    order = class_order(num_classes, seed)
    assert order[:10] == SPEC_PREFIXES[num_classes, seed]
    assert sorted(order) == list(range(num_classes))


def test_class_order_leaves_global_random_alone() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    class_order(100, 42)
    assert random.random() == expected


def test_standard_order_and_task_split() -> None:
    assert class_order(10, 5, "standard") == list(range(10))
    tasks = split_into_tasks(class_order(200, 42), 10)
    assert [len(t) for t in tasks] == [20] * 10 and tasks[0][:3] == [66, 187, 101]
    assert split_into_tasks(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError):
        split_into_tasks(list(range(10)), 11)
    with pytest.raises(ValueError, match="seeded"):
        class_order(10, 0, "shuffled")  # type: ignore[arg-type]


def test_options_validation() -> None:
    assert RealDataOptions.parse({}).image_size == 224
    with pytest.raises(TypeError, match="class_order"):
        RealDataOptions.parse({"order": "seeded"})
    with pytest.raises(ValueError, match="class_order"):
        RealDataOptions.parse({"class_order": "random"})


def test_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NORGA_DATA", raising=False)
    assert resolve_data_root(None) == Path("./data")
    monkeypatch.setenv("NORGA_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"


def _kinds(pipeline: T.Compose) -> list[type]:
    return [type(t) for t in pipeline.transforms]


def test_paper_transforms_at_224() -> None:
    cifar = build_transforms("cifar")
    assert _kinds(cifar.train) == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter,
                                   T.ToTensor, T.Normalize]
    assert _kinds(cifar.test) == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    crop = cifar.train.transforms[0]
    assert crop.scale == (0.08, 1.0) and crop.interpolation == T.InterpolationMode.BICUBIC
    assert cifar.train.transforms[2].brightness == pytest.approx((1 - 63 / 255, 1 + 63 / 255))
    assert cifar.test.transforms[0].size == 256 and cifar.test.transforms[1].size == (224, 224)
    assert (cifar.mean, cifar.std) == (CIFAR_MEAN, CIFAR_STD)
    default = build_transforms("default")
    assert _kinds(default.train) == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor]
    assert _kinds(default.test) == [T.Resize, T.CenterCrop, T.ToTensor]
    crop = default.train.transforms[0]
    assert crop.scale == (0.05, 1.0) and crop.interpolation == T.InterpolationMode.BILINEAR
    assert default.mean is None
    assert eval_resize_size(224) == 256 and eval_resize_size(32) == 37


def test_coda_smope_transforms_at_224() -> None:
    """GT-RIPL/CODA-Prompt and SMoPE ``dataloaders/utils.py::get_transform`` (CODA lines 28-65,
    SMoPE lines 36-78): train ``RandomResizedCrop(224)`` (torchvision defaults), flip,
    ``Normalize((0,0,0), (1,1,1))`` (a no-op, so none here); test ``Resize(256)`` +
    ``CenterCrop(224)`` for ImageNet-R and CUB-200, ``Resize(224)`` alone otherwise (CIFAR)."""
    coda = build_transforms("coda")
    assert _kinds(coda.train) == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor]
    crop = coda.train.transforms[0]
    assert crop.scale == (0.08, 1.0) and crop.interpolation == T.InterpolationMode.BILINEAR
    assert _kinds(coda.test) == [T.Resize, T.CenterCrop, T.ToTensor]
    assert coda.test.transforms[0].size == 256 and coda.test.transforms[1].size == (224, 224)
    assert coda.test.transforms[0].interpolation == T.InterpolationMode.BILINEAR
    cifar = build_transforms("coda-cifar")
    assert _kinds(cifar.test) == [T.Resize, T.ToTensor] and cifar.test.transforms[0].size == 224
    assert coda.mean is None and cifar.mean is None
    out = cifar.test(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert out.shape == (3, 224, 224) and float(out.max()) == pytest.approx(1.0)
    from cl.data.realdata import RealDataOptions

    opts = RealDataOptions.parse({"transforms": "coda"})
    assert (opts.kind("cifar"), opts.kind("default")) == ("coda-cifar", "coda")
    assert RealDataOptions.parse({}).kind("cifar") == "cifar"
    with pytest.raises(ValueError, match="transforms must be one of hide, coda"):
        RealDataOptions.parse({"transforms": "smope"})


@pytest.mark.parametrize("kind", ["cifar", "default", "coda"])  # coda-cifar: square input only
def test_small_image_size_output(kind: str) -> None:
    pair = build_transforms(kind, image_size=32)  # type: ignore[arg-type]
    image = Image.new("RGB", (50, 40), (255, 0, 0))
    for transform in (pair.train, pair.test):
        out = transform(image)
        assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32)


def test_normalisation_options() -> None:
    none = build_transforms("cifar", normalization="none")
    assert T.Normalize not in _kinds(none.test)
    backbone = build_transforms("default", normalization="backbone", mean=(0.5,) * 3,
                                std=(0.5,) * 3)
    assert backbone.test.transforms[-1].mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="mean and std"):
        build_transforms("default", normalization="backbone")
    with pytest.raises(ValueError, match="normalization"):
        build_transforms("default", normalization="imagenet")  # type: ignore[arg-type]


def test_transform_objects_are_never_reused() -> None:
    a, b = build_transforms("cifar"), build_transforms("cifar")
    ids_a = {id(t) for p in (a.train, a.test) for t in p.transforms}
    ids_b = {id(t) for p in (b.train, b.test) for t in p.transforms}
    assert not ids_a & ids_b
    assert not {id(t) for t in a.train.transforms} & {id(t) for t in a.test.transforms}
