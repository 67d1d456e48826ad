"""The contract between benchmark loaders and the CL engine.

Every benchmark (offline or real) is turned into a :class:`Benchmark`: three image datasets that
return ``(image_tensor, original_class_id)`` plus the class-to-task split. The engine never needs
to know where the images came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset


@dataclass
class SplitDataset:
    """One split of a benchmark.

    Attributes
    ----------
    dataset:
        ``dataset[i]`` returns ``(image, label)`` with ``image`` a float tensor of shape
        ``(3, H, W)`` (already transformed) and ``label`` the *original* class id (an ``int``).
    targets:
        int64 array of the labels of every item, ``len(targets) == len(dataset)``; used to build
        per-task and per-class subsets without loading images.
    """

    dataset: Dataset
    targets: np.ndarray

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if len(self.targets) != len(self.dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"targets has {len(self.targets)} entries but the dataset has "
                f"{len(self.dataset)} items"  # type: ignore[arg-type]
            )

    def indices_of(self, classes: list[int] | np.ndarray) -> np.ndarray:
        """Indices of the items whose label is in ``classes``, in dataset order."""
        return np.flatnonzero(np.isin(self.targets, np.asarray(classes)))


@dataclass
class Benchmark:
    """A class-incremental benchmark split into tasks.

    Attributes
    ----------
    name:
        Registry name, e.g. ``"cifar100"``.
    num_classes:
        Number of classes of the whole benchmark (size of the single classifier head).
    train:
        Training images with the training transform (augmentation).
    train_eval:
        The same training images with the *test* transform; used for Gaussian class statistics
        (docs/cl-background.md#statistics-and-tap).
    test:
        Test images with the test transform.
    task_classes:
        ``task_classes[t]`` lists the original class ids of task ``t``, in task order.
    image_size:
        Side length of the (square) images returned by the datasets.
    info:
        Provenance that goes into ``env.json``: source URLs and file checksums for real data, or
        the generator parameters for synthetic data. Must be JSON-serialisable.
    """

    name: str
    num_classes: int
    train: SplitDataset
    train_eval: SplitDataset
    test: SplitDataset
    task_classes: list[list[int]]
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    @property
    def class_to_task(self) -> np.ndarray:
        """``class_to_task[c]`` is the task of class ``c`` (``-1`` for classes in no task)."""
        mapping = np.full(self.num_classes, -1, dtype=np.int64)
        for task, classes in enumerate(self.task_classes):
            mapping[np.asarray(classes, dtype=np.int64)] = task
        return mapping
