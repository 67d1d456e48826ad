"""Building blocks shared by the real-image benchmarks (CIFAR-100, ImageNet-R, CUB-200, 5-Datasets).

* where the data live (:func:`resolve_data_root`),
* the builders' common options (:class:`RealDataOptions`),
* the class order and the class-to-task split of docs/cl-background.md#splits (re-exported
  from :mod:`cl.data.splits`, the one implementation),
* the ``Benchmark`` of a benchmark with one train/test split (:func:`split_benchmark`),
* two map-style datasets: images held in memory (:class:`ArrayImageDataset`) and image files
  decoded on access (:class:`FileImageDataset`); both return ``(tensor, original class id)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from cl.data.base import Benchmark, SplitDataset
from cl.data.download import Fetcher
from cl.data.splits import (  # noqa: F401 - class_order, split_into_tasks re-exported
    ClassOrder,
    class_order,
    split_into_tasks,
)
from cl.data.transforms import (
    Normalization,
    TransformFamily,
    TransformKind,
    TransformPair,
    family_kind,
)
from norga.choices import check_choice

DATA_ROOT_ENV = "NORGA_DATA"
DEFAULT_DATA_ROOT = "./data"


def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path:
    """``data_root``, else ``$NORGA_DATA``, else ``./data`` (user ``~`` expanded)."""
    chosen = data_root if data_root is not None else os.environ.get(DATA_ROOT_ENV)
    return Path(chosen if chosen else DEFAULT_DATA_ROOT).expanduser()


@dataclass(frozen=True)
class RealDataOptions:
    """Options every real-benchmark builder accepts (``build_benchmark(..., **options)``).

    Attributes
    ----------
    image_size:
        Side of the output images (224 in the papers).
    num_tasks:
        Number of tasks (``None``: the benchmark's standard, 10 or 5).
    class_order:
        ``"seeded"``: ``random.seed(seed); random.shuffle(list(range(C)))`` as NoRGa does
        (for 5-Datasets the order of the five datasets is shuffled the same way);
        ``"standard"``: natural order.
    normalization, mean, std:
        See :func:`cl.data.transforms.build_transforms`.
    fetch:
        Download function (tests inject one; ``None`` uses urllib).
    progress:
        Show download progress bars.
    transforms:
        ``"hide"``: the HiDe-Prompt / NoRGa transforms (default); ``"coda"``: those of the
        CODA-Prompt / SMoPE code; ``"port"``: the L2P / DualPrompt ports' one pair for every
        dataset (:mod:`cl.data.transforms`).
    """

    image_size: int = 224
    num_tasks: int | None = None
    class_order: ClassOrder = "seeded"
    normalization: Normalization = "paper"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    fetch: Fetcher | None = None
    progress: bool = True
    transforms: str = "hide"

    @classmethod
    def parse(cls, options: dict[str, Any]) -> RealDataOptions:
        """Validate builder ``**options``; unknown names raise ``TypeError`` listing the
        accepted ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; real-data builders "
                            f"accept {', '.join(allowed)}")
        parsed = cls(**options)
        check_choice("class_order", parsed.class_order, get_args(ClassOrder))
        check_choice("transforms", parsed.transforms, get_args(TransformFamily))
        if parsed.num_tasks is not None and parsed.num_tasks < 1:
            raise ValueError(f"num_tasks must be positive; got {parsed.num_tasks}")
        return parsed

    def kind(self, hide_kind: TransformKind) -> TransformKind:
        """The transform kind of a dataset whose HiDe/NoRGa kind is ``hide_kind``, under the
        chosen family (``"coda"``: CODA/SMoPE's, Resize-only test transform for CIFAR)."""
        return family_kind(self.transforms, hide_kind)

    def transform_args(self) -> dict[str, Any]:
        """Keyword arguments for :func:`cl.data.transforms.build_transforms`."""
        return {"image_size": self.image_size, "normalization": self.normalization,
                "mean": self.mean, "std": self.std}


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


class ArrayImageDataset(Dataset):
    """Images held in memory as uint8 arrays ``(H, W)`` (grayscale) or ``(H, W, 3)``.

    Grayscale images become 3-channel RGB before the transform.
    """

    def __init__(self, images: np.ndarray | Sequence[np.ndarray], labels: np.ndarray,
                 transform: Callable[[Image.Image], Any]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = _to_rgb(Image.fromarray(np.asarray(self.images[index])))
        return self.transform(image), int(self.labels[index])


class FileImageDataset(Dataset):
    """Image files decoded on access (converted to RGB)."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray,
                 transform: Callable[[Image.Image], Any]) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        with Image.open(self.paths[index]) as image:
            rgb = _to_rgb(image)
            rgb.load()
        return self.transform(rgb), int(self.labels[index])


def three_splits(make: Callable[[str, Callable[[Image.Image], Any]], Dataset],
                 transforms: TransformPair, train_labels: np.ndarray,
                 test_labels: np.ndarray) -> tuple[SplitDataset, SplitDataset, SplitDataset]:
    """``(train, train_eval, test)`` of a benchmark.

    ``make(split, transform)`` builds the dataset of ``split`` (``"train"`` or ``"test"``) with
    ``transform``; ``train_eval`` is the training data with the test transform.
    """
    return (SplitDataset(make("train", transforms.train), train_labels),
            SplitDataset(make("train", transforms.test), train_labels),
            SplitDataset(make("test", transforms.test), test_labels))


def order_info(order: Sequence[int], option: ClassOrder, seed: int) -> dict[str, Any]:
    """Provenance of the class order for ``Benchmark.info``."""
    rule = (f"random.seed({seed}); random.shuffle(list(range({len(order)})))"
            if option == "seeded" else "natural order")
    return {"class_order": [int(c) for c in order], "class_order_rule": rule}


def split_benchmark(name: str, *, num_classes: int, opts: RealDataOptions, seed: int,
                    order: Sequence[int], tasks: list[list[int]], transforms: TransformPair,
                    make: Callable[[str, Callable[[Image.Image], Any]], Dataset],
                    train_labels: np.ndarray, test_labels: np.ndarray, source: dict[str, Any],
                    split: Any, class_names: list[str]) -> Benchmark:
    """The :class:`~cl.data.base.Benchmark` of a single dataset with one train/test split
    (CIFAR-100, ImageNet-R, CUB-200): its three splits (:func:`three_splits` with ``make``) and
    the ``info`` they share: ``source`` (provenance), ``split`` (how train and test were
    chosen), the split sizes, ``class_names``, the class order (:func:`order_info`) and the
    transforms.

    ``order`` (from :func:`class_order`) and ``tasks`` (from :func:`split_into_tasks`) are
    computed by the caller, so that its options are validated in its own order.
    """
    train, train_eval, test = three_splits(make, transforms, train_labels, test_labels)
    info = {
        "dataset": name,
        "source": source,
        "split": split,
        "num_train": len(train_labels),
        "num_test": len(test_labels),
        "class_names": class_names,
        **order_info(order, opts.class_order, seed),
        "transforms": transforms.describe(),
    }
    return Benchmark(name=name, num_classes=num_classes, train=train, train_eval=train_eval,
                     test=test, task_classes=tasks, image_size=opts.image_size, info=info)


def not_found_message(dataset: str, root: Path, layout: Sequence[str],
                      downloads: Sequence[str]) -> str:
    """Message of a :class:`~cl.data.registry.DatasetNotFoundError`: what is missing, the
    expected layout under ``root`` and where to get the files."""
    lines = [f"dataset {dataset!r} not found under {root} (set with --data-root or "
             f"${DATA_ROOT_ENV}). Expected layout:"]
    lines += [f"  {root}/{entry}" for entry in layout]
    lines.append("Run again with --download, or download by hand and place as above:")
    lines += [f"  {entry}" for entry in downloads]
    return "\n".join(lines)
