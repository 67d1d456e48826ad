"""The one class-order / task-split implementation (cl.data.splits), its uneven splits, and the
class order of the offline benchmarks, pinned."""

from __future__ import annotations

import pytest

import cl.data.realdata as realdata
from cl.data import build_benchmark
from cl.data.splits import class_order, split_into_tasks

# random.seed(s); l = list(range(10)); random.shuffle(l), cut into 5 tasks of 2
ORDER_10 = {0: [7, 8, 1, 5, 3, 4, 2, 0, 9, 6], 1: [6, 8, 9, 7, 5, 3, 0, 4, 1, 2],
            42: [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]}


def test_real_benchmarks_use_the_same_implementation():
    assert realdata.split_into_tasks is split_into_tasks
    assert realdata.class_order is class_order


@pytest.mark.parametrize("num_classes, num_tasks, sizes", [
    (10, 4, [3, 3, 3, 1]), (7, 3, [3, 3, 1]), (8, 3, [3, 3, 2]), (10, 10, [1] * 10),
    (10, 1, [10]), (100, 10, [10] * 10), (11, 2, [6, 5]),
])
def test_uneven_splits_keep_every_class_exactly_once(num_classes, num_tasks, sizes):
    order = class_order(num_classes, 3)
    tasks = split_into_tasks(order, num_tasks)
    assert [len(t) for t in tasks] == sizes
    assert [c for t in tasks for c in t] == order  # consecutive chunks, nothing dropped


@pytest.mark.parametrize("num_classes, num_tasks", [(10, 6), (10, 0), (10, 11), (4, 3)])
def test_splits_that_cannot_fill_every_task_are_refused(num_classes, num_tasks):
    with pytest.raises(ValueError, match="num_tasks|cannot fill"):
        split_into_tasks(list(range(num_classes)), num_tasks)


@pytest.mark.parametrize("dataset", ["synthetic", "digits"])
@pytest.mark.parametrize("seed", sorted(ORDER_10))
def test_offline_benchmark_class_order_is_pinned(dataset, seed):
    options = {"train_per_class": 1, "test_per_class": 1} if dataset == "synthetic" else {}
    bench = build_benchmark(dataset, seed=seed, **options)
    order = ORDER_10[seed]
    assert bench.task_classes == [order[2 * t:2 * t + 2] for t in range(5)]


def test_synthetic_uneven_split_keeps_every_class():
    bench = build_benchmark("synthetic", seed=0, num_tasks=4, train_per_class=1,
                            test_per_class=1)
    assert bench.task_classes == [[7, 8, 1], [5, 3, 4], [2, 0, 9], [6]]
