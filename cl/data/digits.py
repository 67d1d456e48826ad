"""``digits``: scikit-learn's bundled 8x8 handwritten digits, upsampled; 5 tasks x 2 classes.

The train/test split is stratified with a fixed split seed, so every run seed sees the same
images; the run seed only decides the class order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cl.data.base import Benchmark, SplitDataset
from cl.data.splits import array_sha256, class_order, split_into_tasks
from cl.data.tensor_dataset import TensorImageDataset


def _to_images(flat: np.ndarray, image_size: int) -> torch.Tensor:
    x = torch.from_numpy(flat.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


def build_digits(
    *,
    data_root: object = None,
    seed: int = 0,
    download: bool = False,
    num_tasks: int = 5,
    image_size: int = 32,
    test_fraction: float = 0.3,
    split_seed: int = 0,
) -> Benchmark:
    """Build the digits benchmark (``data_root`` and ``download`` are ignored)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    idx_tr, idx_te = train_test_split(
        np.arange(len(data.target)),
        test_size=test_fraction,
        stratify=data.target,
        random_state=split_seed,
    )
    x_tr, y_tr = _to_images(data.data[idx_tr], image_size), data.target[idx_tr].astype(np.int64)
    x_te, y_te = _to_images(data.data[idx_te], image_size), data.target[idx_te].astype(np.int64)
    train = SplitDataset(TensorImageDataset(x_tr, torch.from_numpy(y_tr)), y_tr)
    test = SplitDataset(TensorImageDataset(x_te, torch.from_numpy(y_te)), y_te)
    return Benchmark(
        name="digits",
        num_classes=10,
        train=train,
        train_eval=train,
        test=test,
        task_classes=split_into_tasks(class_order(10, seed), num_tasks),
        image_size=image_size,
        info={
            "source": "sklearn.datasets.load_digits (bundled with scikit-learn)",
            "params": dict(num_tasks=num_tasks, image_size=image_size,
                           test_fraction=test_fraction, split_seed=split_seed),
            "raw_sha256": array_sha256(data.data, data.target),
        },
    )
