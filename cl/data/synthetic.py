"""``synthetic``: class-conditional images that a frozen random ViT plus prompts can learn.

Each class has a smooth random prototype (a low-resolution random colour pattern, upsampled).
An image is its class prototype, plus a random smooth "distractor" pattern shared across
classes, plus pixel noise. The images depend only on the generator parameters (``data_seed``);
the run seed only decides the class order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cl.data.base import Benchmark, SplitDataset
from cl.data.splits import array_sha256, class_order, split_into_tasks
from cl.data.tensor_dataset import TensorImageDataset


def _smooth_patterns(
    rng: np.random.Generator, n: int, image_size: int, grid: int
) -> torch.Tensor:
    low = torch.from_numpy(rng.standard_normal((n, 3, grid, grid)).astype(np.float32))
    return F.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)


def make_synthetic(
    num_classes: int = 10,
    per_class: int = 100,
    image_size: int = 32,
    *,
    grid: int = 4,
    distractor: float = 0.5,
    noise: float = 0.5,
    data_seed: int = 0,
    split: str = "train",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``per_class`` images per class; ``split`` selects an independent draw."""
    rng_protos = np.random.default_rng([data_seed, 0])
    protos = _smooth_patterns(rng_protos, num_classes, image_size, grid)
    rng = np.random.default_rng([data_seed, 1 if split == "train" else 2])
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    n = labels.shape[0]
    images = protos[labels]
    images = images + distractor * _smooth_patterns(rng, n, image_size, grid)
    images = images + noise * torch.from_numpy(
        rng.standard_normal((n, 3, image_size, image_size)).astype(np.float32)
    )
    return images, labels


def build_synthetic(
    *,
    data_root: object = None,
    seed: int = 0,
    download: bool = False,
    num_classes: int = 10,
    num_tasks: int = 5,
    image_size: int = 32,
    train_per_class: int = 100,
    test_per_class: int = 50,
    grid: int = 4,
    distractor: float = 0.5,
    noise: float = 0.5,
    data_seed: int = 0,
) -> Benchmark:
    """Build the synthetic benchmark (``data_root`` and ``download`` are ignored)."""
    params = dict(
        num_classes=num_classes,
        num_tasks=num_tasks,
        image_size=image_size,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        grid=grid,
        distractor=distractor,
        noise=noise,
        data_seed=data_seed,
    )
    common = dict(image_size=image_size, grid=grid, distractor=distractor, noise=noise,
                  data_seed=data_seed)
    x_tr, y_tr = make_synthetic(num_classes, train_per_class, split="train", **common)
    x_te, y_te = make_synthetic(num_classes, test_per_class, split="test", **common)
    train = SplitDataset(TensorImageDataset(x_tr, y_tr), y_tr.numpy())
    test = SplitDataset(TensorImageDataset(x_te, y_te), y_te.numpy())
    order = class_order(num_classes, seed)
    return Benchmark(
        name="synthetic",
        num_classes=num_classes,
        train=train,
        train_eval=train,  # no augmentation, so the statistics split is the training split
        test=test,
        task_classes=split_into_tasks(order, num_tasks),
        image_size=image_size,
        info={
            "generator": "cl.data.synthetic",
            "params": params,
            "sha256": array_sha256(x_tr.numpy(), y_tr.numpy(), x_te.numpy(), y_te.numpy()),
        },
    )
