"""The one builder skeleton of the real benchmarks (cl/data/builder.py), on a toy reader."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from cl.data.builder import Choice, Request, SplitData, build_real_benchmark
from cl.data.realdata import ArrayImageDataset


def _toy_reader(seen: list[Request]):
    images = np.zeros((8, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])

    def read(request: Request) -> SplitData:
        seen.append(request)
        return SplitData("toy", num_classes=4, num_tasks=2, kind="default",
                         make=lambda split, t: ArrayImageDataset(images, labels, t),
                         train_labels=labels, test_labels=labels, source={"where": "memory"},
                         split="same", class_names=list("abcd"))

    return read


def test_choice_defaults_pops_and_names_what_is_allowed():
    options = {"split": "hide", "image_size": 8}
    assert Choice("fixed", ("fixed", "hide")).take("split", options) == "hide"
    assert options == {"image_size": 8}
    assert Choice("fixed", ("fixed", "hide")).take("split", options) == "fixed"
    with pytest.raises(ValueError, match=r"^split must be one of fixed, hide; got 'x'$"):
        Choice("fixed", ("fixed", "hide")).take("split", {"split": "x"})
    leak = Choice(False, (False, True))
    assert leak.take("leak", {"leak": True}) is True
    for bad in (1, 0, "yes", None):  # only real booleans (1 == True, but is not one)
        with pytest.raises(ValueError, match=r"^leak must be true or false; got "):
            leak.take("leak", {"leak": bad})


def test_skeleton_takes_own_options_first_then_the_common_ones(tmp_path, monkeypatch):
    seen: list[Request] = []
    monkeypatch.setenv("NORGA_DATA", str(tmp_path))
    options = {"mode": "b", "image_size": 8, "num_tasks": 4, "class_order": "standard",
               "progress": False}
    bench = build_real_benchmark(_toy_reader(seen), data_root=None, seed=3, download=True,
                                 options=options, own_options={"mode": Choice("a", ("a", "b"))})
    assert "mode" in options  # the caller's dict is left alone
    (request,) = seen
    assert request.own == {"mode": "b"} and request.seed == 3 and request.root == Path(tmp_path)
    assert request.how.allow_download is True and request.how.progress is False
    assert bench.task_classes == [[0], [1], [2], [3]] and bench.image_size == 8
    assert bench.info["class_order_rule"] == "natural order"
    assert bench.info["source"] == {"where": "memory"} and len(bench.train_eval.dataset) == 8
    # the standard number of tasks of the reader when the options give none; seeded order
    bench = build_real_benchmark(_toy_reader(seen), data_root=tmp_path, seed=3, download=False,
                                 options={"image_size": 8})
    reference = list(range(4))
    random.Random(3).shuffle(reference)  # the NoRGa rule: random.seed(3); random.shuffle
    assert bench.info["class_order"] == reference == [3, 0, 2, 1]
    assert bench.task_classes == [[3, 0], [2, 1]]
    # an own option is not a common one: without its declaration it is refused before reading
    with pytest.raises(TypeError, match=r"unknown option\(s\) mode"):
        build_real_benchmark(_toy_reader(seen), data_root=tmp_path, seed=0, download=False,
                             options={"mode": "a"})
    with pytest.raises(ValueError, match="mode must be one of a, b; got 'c'"):
        build_real_benchmark(_toy_reader(seen), data_root=tmp_path, seed=0, download=False,
                             options={"mode": "c", "bogus": 1},
                             own_options={"mode": Choice("a", ("a", "b"))})
    assert len(seen) == 2
