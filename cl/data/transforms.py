"""Image transforms of the real benchmarks (docs/cl-background.md#transforms).

Two families, as in the HiDe-Prompt / NoRGa code:

* ``"cifar"`` (CIFAR-100, and CIFAR-10 inside 5-Datasets): train ``RandomResizedCrop`` (bicubic,
  default scale), horizontal flip, ``ColorJitter(brightness=63/255)``; test ``Resize`` (bicubic)
  then ``CenterCrop``; CIFAR-100 mean/std normalisation.
* ``"default"`` (ImageNet-R, CUB-200, MNIST, Fashion-MNIST, notMNIST, SVHN): train
  ``RandomResizedCrop(scale=(0.05, 1))`` (bilinear) and flip; the same test transform; **no
  normalisation** (pixels in [0, 1]).

At ``image_size=224`` the test resize is 256, as in the papers; other sizes keep the ratio
256/224. ``normalization="backbone"`` replaces the paper's choice by the backbone's own mean and
std (not what the published numbers used, docs/cl-background.md#no-backbone-normalisation);
``"none"`` removes it everywhere.

The CODA-Prompt / SMoPE code (``dataloaders/utils.py::get_transform``) has its own family, chosen
with the option ``transforms="coda"`` (``--set dataset_options.transforms=coda``, part of
``--protocol official`` for those methods): train ``RandomResizedCrop`` with torchvision's
defaults (bilinear, scale (0.08, 1)) and flip, no normalisation; test ``Resize(256)`` +
``CenterCrop(224)`` (``"coda"``: ImageNet-R, CUB-200) or ``Resize(224)`` alone (``"coda-cifar"``).

The original PyTorch ports of L2P and DualPrompt (JH-LEE-KR/l2p-pytorch @ f7bc994,
dualprompt-pytorch @ 7eb457d, ``datasets.py``: one ``build_transform`` pair, built once at
l.37-38 of the DualPrompt port and used for every dataset, l.195-216) apply the ``"default"`` kind
to every dataset, CIFAR-100 and CIFAR-10 included: the family ``transforms="port"``
(``--set dataset_options.transforms=port``, part of ``--set recipe=original-port`` for L2P and
DualPrompt).

Every call of :func:`build_transforms` returns new transform objects, so two datasets never share
one by accident (the 5-Datasets leak of the original code,
docs/cl-background.md#five-datasets-transforms).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from torchvision import transforms as T

from norga.choices import check_choice

TransformKind = Literal["cifar", "default", "coda", "coda-cifar"]
# which code's transforms a benchmark uses (RealDataOptions.transforms): HiDe-Prompt / NoRGa's,
# CODA-Prompt / SMoPE's, or the L2P / DualPrompt ports' single pair
TransformFamily = Literal["hide", "coda", "port"]
Normalization = Literal["paper", "none", "backbone"]

CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)
CIFAR_BRIGHTNESS = 63 / 255
DEFAULT_CROP_SCALE = (0.05, 1.0)
DEFAULT_CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class TransformPair:
    """The training (augmenting) and test (deterministic) transform of one dataset."""

    train: Callable[[Any], Any]
    test: Callable[[Any], Any]
    kind: TransformKind
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for ``Benchmark.info``."""
        return {"kind": self.kind, "mean": self.mean, "std": self.std,
                "train": repr(self.train), "test": repr(self.test)}


def family_kind(family: TransformFamily, hide_kind: TransformKind) -> TransformKind:
    """The transform kind of a dataset whose HiDe/NoRGa kind is ``hide_kind``, under the
    transform ``family`` (see the module docstring)."""
    check_choice("transforms", family, get_args(TransformFamily))
    if family == "hide":
        return hide_kind
    if family == "port":
        return "default"
    return "coda-cifar" if hide_kind == "cifar" else "coda"


def eval_resize_size(image_size: int) -> int:
    """Side of the test-time resize before the centre crop (256 for 224)."""
    return int(round(image_size * 256 / 224))


def resolve_normalization(kind: TransformKind, normalization: Normalization,
                          mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None,
                          ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` applied for ``kind`` under ``normalization``, or ``None``."""
    check_choice("normalization", normalization, get_args(Normalization))
    if normalization == "none":
        return None
    if normalization == "backbone":
        if mean is None or std is None:
            raise ValueError("normalization='backbone' needs mean and std (the backbone's data "
                             "config, e.g. timm's pretrained_cfg['mean'/'std'])")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each; got {mean} and {std}")
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return (CIFAR_MEAN, CIFAR_STD) if kind == "cifar" else None


def build_transforms(kind: TransformKind = "default", *, image_size: int = 224,
                     normalization: Normalization = "paper",
                     mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> TransformPair:
    """Build the train and test transforms of one dataset.

    Parameters
    ----------
    kind:
        ``"cifar"`` or ``"default"`` (see the module docstring).
    image_size:
        Side of the square output images (224 in the papers; tests use small sizes).
    normalization:
        ``"paper"`` (CIFAR statistics for ``"cifar"``, none otherwise), ``"none"``, or
        ``"backbone"`` (use ``mean``/``std``).
    mean, std:
        Per-channel statistics for ``normalization="backbone"``.

    Returns
    -------
    TransformPair
        New transform objects (never shared with another call). Both map a PIL RGB image to a
        float tensor of shape ``(3, image_size, image_size)``.
    """
    check_choice("kind", kind, get_args(TransformKind))
    if image_size < 1:
        raise ValueError(f"image_size must be positive; got {image_size}")
    stats = resolve_normalization(kind, normalization, mean, std)
    bicubic = T.InterpolationMode.BICUBIC
    if kind == "cifar":
        train = [T.RandomResizedCrop(image_size, interpolation=bicubic),
                 T.RandomHorizontalFlip(),
                 T.ColorJitter(brightness=CIFAR_BRIGHTNESS)]
    elif kind in ("coda", "coda-cifar"):  # CODA / SMoPE dataloaders/utils.py get_transform
        train = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        train = [T.RandomResizedCrop(image_size, scale=DEFAULT_CROP_SCALE,
                                     ratio=DEFAULT_CROP_RATIO,
                                     interpolation=T.InterpolationMode.BILINEAR),
                 T.RandomHorizontalFlip()]
    if kind == "coda":
        test = [T.Resize(eval_resize_size(image_size)), T.CenterCrop(image_size)]
    elif kind == "coda-cifar":
        test = [T.Resize(image_size)]
    else:
        test = [T.Resize(eval_resize_size(image_size), interpolation=bicubic),
                T.CenterCrop(image_size)]
    # _tensor_tail() builds fresh objects per call: train and test share nothing either
    return TransformPair(
        train=T.Compose(train + _tensor_tail(stats)),
        test=T.Compose(test + _tensor_tail(stats)),
        kind=kind,
        mean=None if stats is None else stats[0],
        std=None if stats is None else stats[1],
    )


def _tensor_tail(stats: tuple[tuple[float, ...], tuple[float, ...]] | None) -> list[Any]:
    tail: list[Any] = [T.ToTensor()]
    if stats is not None:
        tail.append(T.Normalize(stats[0], stats[1]))
    return tail
